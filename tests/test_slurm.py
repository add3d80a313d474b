"""A real SLURM run (slow): a single-node cluster (tests/slurm_cluster.py) runs a 2-job sweep through
``hydra/launcher=submitit_slurm``; then two running jobs are requeued, one from outside (``scontrol
requeue``), one by submitit on the signal SLURM sends before the time limit; each resumes from its own
``last.ckpt`` and ends with the metrics of the same job run without interruption. A failure names
what the scheduler and the jobs saw (:func:`evidence_on_failure`)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cifar_overrides
from slurm_cluster import SlurmCluster, slurm_cluster
from test_sweeps import needs_plugins

pytestmark = [pytest.mark.slow, needs_plugins]

# CPU node: no GPU request, one core and 1 GB per job.
ON_TEST_CLUSTER = (
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=20",
)
# Augmentation off: it draws from torch's global RNG, which a checkpoint does not hold, so only
# without it does a resumed run repeat an uninterrupted one exactly.
EXACT = ("trainer=cpu", "data.random_crop=false", "data.horizontal_flip=false", "rnn=none")


def sweep_command(cifar_root: Path, sweep: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crnn.train",
        "-m",
        *cifar_overrides(cifar_root, *EXACT, *extra),
        *ON_TEST_CLUSTER,
        f"hydra.sweep.dir={sweep}",
    ]


def slurm_job_ids(sweep: Path) -> list[str]:
    """The array tasks submitit made: its folders ``<sweep>/.submitit/<array job>_<task>``."""
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if "_" in p.name and p.name[0].isdigit())


def submitit_logs(sweep: Path, job_id: str) -> dict[Path, str]:
    """The job's stdout and stderr as submitit's sbatch script keeps them (``--open-mode=append``:
    every attempt of a requeued job, one after the other)."""
    return {p: p.read_text() for p in sorted((sweep / ".submitit" / job_id).glob("*_log.*"))}


def submitit_events(log: str, event: str) -> int:
    """How many times submitit logged ``event`` (its own handler's lines, not their copy in Hydra's log
    format): "Starting with" once per attempt, "Job completed successfully" once it wrote a result."""
    return len(re.findall(rf"^submitit INFO \(.*\) - {re.escape(event)}", log, re.MULTILINE))


@contextlib.contextmanager
def evidence_on_failure(cluster: SlurmCluster, sweep: Path, keep: Path, launcher_output: list[str]):
    """A failure inside names what the scheduler and the jobs saw: ``scontrol show job``, the job
    completion log, the end of each job's submitit logs, each metrics.json and the launcher's output
    (all of it in full in ``keep``, which outlives the cluster)."""
    try:
        yield
    except (AssertionError, TimeoutError, RuntimeError, subprocess.SubprocessError) as err:
        ids = slurm_job_ids(sweep) if (sweep / ".submitit").is_dir() else []
        logs = {path: text for job_id in ids for path, text in submitit_logs(sweep, job_id).items()}
        head = [f"--- launcher output\n{''.join(launcher_output)}", cluster.record(*ids)]
        tail = [f"--- {p}\n{p.read_text()}" for p in sorted(sweep.glob("*/metrics.json"))]
        keep.write_text("\n".join([*head, *(f"--- {p}\n{text}" for p, text in logs.items()), *tail]))
        short = [*(f"--- {p} (end)\n{text[-3000:]}" for p, text in logs.items()), *tail]
        text = "\n".join([head[0][-3000:], head[1], *short])
        raise AssertionError(f"{err}\n===== evidence (in full in {keep}) =====\n{text}") from err


def run_sweep(cifar_root: Path, sweep: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        sweep_command(cifar_root, sweep, *extra),
        env=env,
        cwd=sweep.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(launch: subprocess.Popen, output: list[str], timeout: float = 900) -> None:
    """Wait for the launcher, killed after ``timeout`` s; its output appended to ``output``."""
    try:
        output.append(launch.communicate(timeout=timeout)[0])
        print(f"launcher returned at {time.strftime('%H:%M:%S')}")  # beside the jobs' EndTime
    except subprocess.TimeoutExpired:
        launch.kill()
        output.append(launch.communicate()[0])
        raise


def wait_for_training(pattern: Path, timeout: float) -> Path:
    """The run folder matching ``pattern`` once it trains with a checkpoint behind it: ``last.ckpt``
    written and metrics.json still ``running`` (a requeue then lands mid-training)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run_dir in sorted(pattern.parent.glob(pattern.name)):
            metrics = run_dir / "metrics.json"
            if (run_dir / "checkpoints" / "last.ckpt").is_file() and metrics.is_file():
                status = json.loads(metrics.read_text()).get("status")
                assert status == "running", f"{run_dir} is {status} before it could be requeued"
                return run_dir
        time.sleep(0.2)
    raise TimeoutError(f"no run folder {pattern} with a checkpoint after {timeout:.0f} s")


def test_slurm_sweep_and_requeue(tmp_path, cifar_root):
    with slurm_cluster(tmp_path / "cluster") as cluster:
        env = {**cluster.env, "CI": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
        env["OMP_NUM_THREADS"] = "1"

        # 1. A 2-job sweep, both jobs SLURM jobs that complete.
        sweep, output = tmp_path / "sweep", []
        with evidence_on_failure(cluster, sweep, tmp_path / "sweep-evidence.txt", output):
            launch = run_sweep(
                cifar_root,
                sweep,
                env,
                "seed=0,1",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
            )
            finish(launch, output)
            assert launch.returncode == 0, "the sweep failed"
            ids = slurm_job_ids(sweep)
            assert len(ids) == 2, ids
            # submitit (and so the launcher) counts a job done once it has written its result, a few
            # seconds before its process, and so the SLURM job, ends.
            records = [cluster.wait_for_end(job_id) for job_id in ids]
            print(cluster.record(*ids))
            assert [r.get("JobState") for r in records] == ["COMPLETED", "COMPLETED"], records
            metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
            assert [m["status"] for m in metrics] == ["completed", "completed"]
            # Each job's SLURM id in its metrics.json (crnn.train records crnn.sweeps.cluster.slurm_info()).
            assert sorted(str(m.get("slurm_job_id")) for m in metrics) == ids

        # 2. Three identical jobs (they differ only in a W&B tag). While they train, the first is requeued
        # from outside (`scontrol requeue`: SIGTERM, crnn stops at the next batch); the second gets the
        # signal SLURM sends before the time limit (`--signal=USR2@<signal_delay_s>`), on which
        # submitit itself requeues the job and exits. Both resume from their own last.ckpt.
        sweep, output = tmp_path / "requeue", []
        with evidence_on_failure(cluster, sweep, tmp_path / "requeue-evidence.txt", output):
            launch = run_sweep(
                cifar_root, sweep, env, "trainer.max_epochs=8", "tags=[requeued],[time_limit],[uninterrupted]"
            )
            try:
                run_dirs = [wait_for_training(sweep / "0_*", 600)]
                job_ids = slurm_job_ids(sweep)[:2]
                cluster.run("scontrol", "requeue", job_ids[0])
                run_dirs.append(wait_for_training(sweep / "1_*", 600))
                cluster.run("scancel", "--signal=USR2", job_ids[1])
                for job_id in job_ids:
                    cluster.wait_for(
                        job_id,
                        lambda r: r.get("JobState") == "PENDING" and r.get("Restarts") == "1",
                        "requeued",
                    )
                    # SLURM holds a requeued batch job back (BeginTime, about two minutes); not needed here.
                    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            except BaseException:
                finish(launch, output, timeout=0.1)
                raise
            finish(launch, output)
            assert launch.returncode == 0, "the sweep failed"
            records = [cluster.wait_for_end(job_id) for job_id in job_ids]
            print(cluster.record(*job_ids))
            assert [(r.get("JobState"), r.get("Restarts")) for r in records] == [("COMPLETED", "1")] * 2, (
                records
            )
            # The first attempt of each stopped on its signal (crnn's messages) and left no result for
            # submitit (else the launcher would return while the job runs again); the second completed,
            # resuming from the job's own checkpoint (Lightning's message).
            signals = (
                "SIGTERM received: stopping at the next batch",
                "SIGUSR2 received: submitit requeued the job",
            )
            for job_id, run_dir, stopped in zip(job_ids, run_dirs, signals, strict=True):
                log = "".join(submitit_logs(sweep, job_id).values())
                assert stopped in log, f"job {job_id}: no '{stopped}' in its log"
                attempts = [submitit_events(log, e) for e in ("Starting with", "Job completed successfully")]
                assert attempts == [2, 1], (
                    f"job {job_id}: {attempts[0]} attempts started, {attempts[1]} with a result"
                )
                resumed = f"Restoring states from the checkpoint path at {run_dir}/checkpoints/last.ckpt"
                assert resumed in log, f"job {job_id} did not resume from its last.ckpt"
            *requeued, uninterrupted = (
                json.loads((p / "metrics.json").read_text()) for p in sorted(sweep.glob("[012]_*"))
            )
            for metrics in requeued:
                assert metrics["status"] == uninterrupted["status"] == "completed"
                assert metrics.get("slurm_restart_count") == "1"
                for key in ("val/acc1", "val/loss", "test/acc1", "test/loss"):
                    assert metrics[key] == uninterrupted[key], (metrics["run_dir"], key)
