"""Sweep machinery around Hydra's launchers and sweepers: per-job CPU threads, the failure summary
at the end of a multirun, the Optuna study whose ``n_trials`` is a total, and the SLURM/Lightning
glue for one job (:mod:`crnn.sweeps.cluster`)."""
