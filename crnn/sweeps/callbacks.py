"""Hydra callbacks (``hydra.callbacks`` in ``conf/hydra/default.yaml``).

- :class:`JobThreads`: torch / OpenMP threads of each job, so that jobs running side by side
  (``hydra/launcher=parallel``, ``submitit_local``) do not oversubscribe the cores.
- :class:`JobDevices`: each job of a local sweep on its own GPU(s) (round robin by job number).
- :class:`FailureSummary`: at the end of a multirun, the sweep's status as ``crnn-tables --status``
  prints it (:mod:`crnn.results`); the sweep exits non-zero when a job did not complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from crnn.results.read import TablesError, dedupe, read_sweep
from crnn.results.render import status_counts, status_report

log = logging.getLogger("crnn.sweeps")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def threads_for(launcher: DictConfig | dict, cpu_count: int) -> int | None:
    """Threads per job implied by the launcher config: the cores over the jobs that run at once
    (joblib's ``n_jobs``), or the job's ``cpus_per_task`` (submitit); ``None``: leave torch's."""
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = int(launcher.get("n_jobs") or 1)
        at_once = cpu_count if n_jobs < 0 else n_jobs
        return max(1, cpu_count // max(1, at_once))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None


class JobThreads(Callback):
    """Set the job's torch threads (and OMP/MKL/OpenBLAS for its child processes) at job start.

    ``threads``: a number, or ``null`` to derive it from the launcher (:func:`threads_for`).
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        threads = self.threads
        if threads is None:
            threads = threads_for(config.hydra.launcher, os.cpu_count() or 1)
        if threads is None:
            return
        import torch

        torch.set_num_threads(int(threads))
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)
        log.info("torch threads for this job: %d", threads)


def devices_for_job(devices: list[str], job_num: int, per_job: int) -> list[str]:
    """The ``per_job`` devices of job ``job_num``: the visible ``devices`` cut into consecutive
    groups of ``per_job``, assigned round robin (all of them when there are not two groups)."""
    groups = len(devices) // per_job
    if groups < 2:
        return devices
    start = (job_num % groups) * per_job
    return devices[start : start + per_job]


class JobDevices(Callback):
    """Narrow ``CUDA_VISIBLE_DEVICES`` at job start to ``gpus_per_job`` of the GPUs the job sees,
    chosen by the job's number (``null``: the jobs share every visible GPU).

    For ``submitit_local`` (a new process per job) with ``hydra.launcher.gpus_per_node`` set to all
    the machine's GPUs: ``gpus_per_job=1`` runs job k on GPU ``k mod n``. A joblib worker (``parallel``)
    keeps the GPU its first job initialised CUDA on, so there the jobs share the visible GPUs.
    """

    def __init__(self, gpus_per_job: int | None = None):
        if gpus_per_job is not None and int(gpus_per_job) < 1:
            raise ValueError(
                f"hydra.callbacks.job_devices.gpus_per_job must be >= 1 or null, got {gpus_per_job}"
            )
        self.gpus_per_job = None if gpus_per_job is None else int(gpus_per_job)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if self.gpus_per_job is None or not visible:
            return
        import torch

        if torch.cuda.is_initialized():  # a reused worker process: too late to change its GPUs
            log.warning("CUDA is already initialised in this process: the job keeps GPU(s) %s", visible)
            return
        chosen = devices_for_job(visible, int(config.hydra.job.get("num") or 0), self.gpus_per_job)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        log.info("GPU(s) of this job: %s", ",".join(chosen))


class FailureSummary(Callback):
    """After a multirun: log the sweep folder's status (:func:`crnn.results.render.status_report`:
    the counts, each failed or interrupted job with its error, each one still running); then exit
    with ``exit_code`` if any job did not complete (0 = never change the exit status)."""

    def __init__(self, exit_code: int = 1):
        self.exit_code = exit_code

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = dedupe(read_sweep(sweep_dir))
        except TablesError:  # no job folder: nothing ran, nothing to report
            return
        incomplete = len(jobs) - status_counts(jobs)["completed"]
        (log.error if incomplete else log.info)("%s", status_report(jobs, f"Sweep {sweep_dir}").rstrip())
        if incomplete and self.exit_code:
            raise SystemExit(self.exit_code)
