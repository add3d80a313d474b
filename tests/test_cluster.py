"""SLURM glue of one training job: its ids for metrics.json and Lightning's cluster environment."""

from __future__ import annotations

import signal

import pytest

from crnn.sweeps.cluster import lightning_plugins, slurm_info

SLURM_ENV = {
    "SLURM_JOB_ID": "1234",
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "crnn-train",
    "SLURM_RESTART_COUNT": "2",
    "SLURM_JOB_NODELIST": "gpu07",
}


@pytest.fixture
def no_slurm(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_outside_slurm_nothing(no_slurm):
    assert slurm_info() == {} and lightning_plugins() == []


def test_slurm_ids(no_slurm):
    for name, value in SLURM_ENV.items():
        no_slurm.setenv(name, value)
    assert slurm_info() == {
        "slurm_job_id": "1234",
        "slurm_restart_count": "2",
        "slurm_nodelist": "gpu07",
    }
    no_slurm.setenv("SLURM_ARRAY_JOB_ID", "1200")
    no_slurm.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_info()["slurm_job_id"] == "1200_3"  # what scontrol and sacct take


def test_lightning_requeues_unless_submitit_does(no_slurm):
    for name, value in SLURM_ENV.items():
        no_slurm.setenv(name, value)
    (environment,) = lightning_plugins()
    assert type(environment).__name__ == "SLURMEnvironment"
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    no_slurm.setenv("SUBMITIT_FOLDER", "/sweep/.submitit/1234")
    (environment,) = lightning_plugins()
    assert not environment.auto_requeue  # submitit's USR1 handler requeues the job
