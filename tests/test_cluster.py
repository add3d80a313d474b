"""SLURM glue of one training job: its ids for metrics.json, Lightning's cluster environment, and
submitit's requeue recorded as an interruption."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from crnn.lifecycle import graceful_interrupts, outcome_of
from crnn.sweeps.cluster import lightning_plugins, slurm_info, submitit_requeue_signal

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
    assert not environment.auto_requeue  # submitit's own handler requeues the job


class Resubmittable:
    """A job function that submitit can checkpoint (as the Hydra submitit launcher is)."""

    def __call__(self) -> None: ...

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@pytest.mark.parametrize("timeouts_left", [3, 0])
def test_submitit_requeue_is_an_interruption(no_slurm, tmp_path, timeouts_left):
    """submitit's handler of its requeue signal (SLURM sends it before the time limit) requeues the job
    and exits: crnn records an interruption, so the job leaves no result and submitit's launcher
    waits for the requeued attempt. Out of time-outs it is not requeued: an error, the job failed."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths, UncompletedJobError
    from submitit.slurm.slurm import SlurmJobEnvironment

    requeued = []

    class Slurm(SlurmJobEnvironment):
        def _requeue(self, countdown: int) -> None:  # instead of `scontrol requeue`
            requeued.append(countdown)

    no_slurm.setenv("SLURM_JOB_ID", "1234")
    no_slurm.setenv("SUBMITIT_FOLDER", str(tmp_path))
    delayed = DelayedSubmission(Resubmittable())
    delayed.set_timeout(timeout_min=1, max_num_timeout=timeouts_left)  # 1 min: the signal is a time-out
    handler = SignalHandler(Slurm(), JobPaths(tmp_path, job_id="1234"), delayed)
    sig = submitit_requeue_signal()
    assert sig == signal.SIGUSR2
    submitit_handler = signal.signal(sig, handler.checkpoint_and_try_requeue)  # as submitit does
    try:
        with pytest.raises(BaseException) as stop, graceful_interrupts(SimpleNamespace()) as received:
            signal.raise_signal(sig)
    finally:
        signal.signal(sig, submitit_handler)
    outcome = outcome_of(stop.value, received, None)
    if timeouts_left:
        assert requeued == [timeouts_left - 1] and isinstance(stop.value, SystemExit)
        assert outcome == {"status": "interrupted", "reason": "SIGUSR2", "exit_code": 140}
    else:
        assert requeued == [] and isinstance(stop.value, UncompletedJobError)
        assert outcome["status"] == "failed" and "timed-out too many times" in outcome["error"]
