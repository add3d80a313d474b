"""SLURM and Lightning glue for one training job (called by ``crnn.train``).

- :func:`slurm_info`: the job's SLURM ids for its ``metrics.json``.
- :func:`lightning_plugins`: the trainer's cluster environment under SLURM.
- :func:`submitit_requeue_signal`: the signal on which submitit requeues its job.

Requeueing is not done here. A job of ``hydra/launcher=submitit_slurm`` is requeued by submitit:
its handler of :func:`submitit_requeue_signal` (USR2, sent by SLURM ``signal_delay_s`` before the
time limit, or on preemption), installed before the job starts, calls the launcher's ``checkpoint``
and ``scontrol requeue``, then exits (``SystemExit(-1)``, which crnn records as an interruption:
:func:`crnn.lifecycle.graceful_interrupts`); a job requeued from outside (``scontrol requeue``)
gets SIGTERM and stops at the next batch. Either way the attempt leaves no result for submitit,
whose launcher waits for the requeued attempt: it runs the same Hydra job in the same run folder,
where ``resume=true`` continues from ``checkpoints/last.ckpt``. A job started by hand under
``sbatch`` / ``srun`` is requeued by Lightning's :class:`SLURMEnvironment` (``auto_requeue``).
"""

from __future__ import annotations

import os
import signal

SLURM_VARIABLES = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_restart_count": "SLURM_RESTART_COUNT",
    "slurm_nodelist": "SLURM_JOB_NODELIST",
    "slurm_partition": "SLURM_JOB_PARTITION",
}


def slurm_info() -> dict[str, str]:
    """``{"slurm_job_id": "123", "slurm_restart_count": "1", ...}`` for the variables SLURM set;
    ``{}`` outside SLURM. ``slurm_job_id`` is ``<array job>_<task>`` for an array task (what
    ``sacct -j`` and ``scontrol requeue`` take)."""
    info = {key: os.environ[var] for key, var in SLURM_VARIABLES.items() if os.environ.get(var)}
    if "slurm_array_job_id" in info and "slurm_array_task_id" in info:
        info["slurm_job_id"] = f"{info['slurm_array_job_id']}_{info['slurm_array_task_id']}"
    return info


def under_submitit() -> bool:
    """True in a job started by submitit (it sets ``SUBMITIT_FOLDER`` before running it)."""
    return bool(os.environ.get("SUBMITIT_FOLDER"))


def submitit_requeue_signal() -> signal.Signals | None:
    """The signal on which submitit checkpoints and requeues the job it runs (``SUBMITIT_PREEMPT_SIGNAL``,
    USR2 by default); ``None`` outside a submitit job."""
    if not under_submitit():
        return None
    from submitit import JobEnvironment

    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


def lightning_plugins() -> list:
    """``plugins=`` for ``lightning.Trainer``: under SLURM, a :class:`SLURMEnvironment` (ranks from
    ``srun``'s tasks) with Lightning's auto-requeue on USR1 unless submitit requeues the job;
    elsewhere ``[]`` (Lightning's default environment)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=not under_submitit(), requeue_signal=signal.SIGUSR1)]
