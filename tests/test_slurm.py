"""A real SLURM run (slow): a single-node cluster (tests/slurm_cluster.py) runs a 2-job sweep through
``hydra/launcher=submitit_slurm``; then a running job is requeued (``scontrol requeue``), resumes from
its own ``last.ckpt`` and ends with the metrics of the same job run without interruption."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cifar_overrides
from slurm_cluster import slurm_cluster
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


def _wait_for_state(cluster, job_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while cluster.job(job_id).get("JobState") != state and time.time() < deadline:
        time.sleep(0.5)


def test_slurm_sweep_and_requeue(tmp_path, cifar_root):
    with slurm_cluster(tmp_path / "cluster") as cluster:
        env = {**cluster.env, "CI": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
        env["OMP_NUM_THREADS"] = "1"

        # 1. A 2-job sweep, both jobs SLURM jobs that complete.
        sweep = tmp_path / "sweep"
        proc = subprocess.run(
            sweep_command(
                cifar_root, sweep, "seed=0,1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"
            ),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        ids = slurm_job_ids(sweep)
        assert len(ids) == 2, ids
        records = {job_id: cluster.job(job_id) for job_id in ids}
        print(*(cluster.run("scontrol", "show", "job", job_id) for job_id in ids), cluster.completion_log)
        assert [r.get("JobState") for r in records.values()] == ["COMPLETED", "COMPLETED"], records
        metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
        assert [m["status"] for m in metrics] == ["completed", "completed"]

        # 2. Two identical jobs (they differ only in a W&B tag); the first is requeued while it runs.
        sweep = tmp_path / "requeue"
        launch = subprocess.Popen(
            sweep_command(cifar_root, sweep, "trainer.max_epochs=6", "tags=[interrupted],[uninterrupted]"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            first = next(iter(sorted(sweep.glob("0_*"))), None)
            deadline = time.time() + 600
            while time.time() < deadline and not (first and (first / "checkpoints" / "last.ckpt").is_file()):
                time.sleep(0.5)
                first = next(iter(sorted(sweep.glob("0_*"))), None)
            assert first is not None and (first / "checkpoints" / "last.ckpt").is_file(), "no checkpoint"
            job_id = slurm_job_ids(sweep)[0]
            assert cluster.job(job_id).get("JobState") == "RUNNING", cluster.job(job_id)
            cluster.run("scontrol", "requeue", job_id)
            # SLURM holds a requeued batch job back for about two minutes (BeginTime); not needed here.
            _wait_for_state(cluster, job_id, "PENDING")
            cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            output, _ = launch.communicate(timeout=900)
        finally:
            if launch.poll() is None:
                launch.kill()
        assert launch.returncode == 0, output[-3000:]
        record = cluster.job(job_id)
        print(cluster.run("scontrol", "show", "job", job_id), cluster.completion_log)
        assert record.get("JobState") == "COMPLETED" and record.get("Restarts") == "1", record
        interrupted, uninterrupted = (
            json.loads((p / "metrics.json").read_text()) for p in sorted(sweep.glob("[01]_*"))
        )
        assert interrupted["status"] == uninterrupted["status"] == "completed"
        # The second run resumed from the job's own checkpoint (Lightning's message, in submitit's log).
        log = "".join(p.read_text() for p in (sweep / ".submitit" / job_id).glob("*_log.err"))
        resumed = f"Restoring states from the checkpoint path at {first}/checkpoints/last.ckpt"
        assert resumed in log, log[-2000:]
        for key in ("val/acc1", "val/loss", "test/acc1", "test/loss"):
            assert interrupted[key] == uninterrupted[key], key
        # Each job's SLURM id in its metrics.json (crnn.train records crnn.sweeps.cluster.slurm_info()).
        assert sorted(str(m.get("slurm_job_id")) for m in metrics) == ids
        assert interrupted.get("slurm_restart_count") == "1"
