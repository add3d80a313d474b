"""The Optuna sweeper of hydra-optuna-sweeper, with ``n_trials`` the total of a persistent study.

``hydra.sweeper._target_: hydra_plugins.crnn_sweepers.total_trials_optuna.TotalTrialsOptunaSweeper``
(``conf/hparams_search/*``). Before a launch it counts the study's finished trials
(:func:`crnn.sweeps.optuna_study.study_progress`) and runs only ``n_trials`` minus those; job
numbers (and so job folders) continue from the study's trial count, so that a new trial never
lands in the folder of an earlier one. Without the ``cluster`` extra this module defines nothing
(Hydra imports every module of ``hydra_plugins`` at start-up).
"""

from __future__ import annotations

import logging
from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hydra-optuna-sweeper not installed: `pip install -e ".[cluster]"`
    OptunaSweeper = None

log = logging.getLogger("crnn.sweeps")

if OptunaSweeper is not None:

    class TotalTrialsOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            from crnn.sweeps.optuna_study import study_progress

            impl = self.sweeper
            Path(str(impl.sweep_dir)).mkdir(parents=True, exist_ok=True)  # SQLite makes no folders
            total = impl.n_trials
            progress = study_progress(impl.storage, impl.study_name)
            impl.n_trials = progress.to_run(total)
            impl.job_idx = progress.existing
            if progress.existing and hasattr(impl.sampler, "reseed_rng"):
                # A seeded sampler restarts its sequence in a new process: without a new seed a
                # continued study would draw the parameters of its first trials again.
                impl.sampler.reseed_rng()
            log.info(
                "Study %s: %d of %d trials finished (%d failed); running %d",
                impl.study_name,
                progress.finished,
                total,
                progress.failed,
                impl.n_trials,
            )
            super().sweep(arguments)
