"""A single-node SLURM cluster for tests: Debian's slurmctld, slurmd, slurm-client and munge, run as
root without systemd (``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``), the node's
CPUs and memory from ``slurmd -C``, every file in a private folder (``SLURM_CONF`` points the
clients at it; /etc/slurm is not touched). No accounting database: the scheduler's record of a job
is ``scontrol show job`` (finished jobs stay listed for ``MinJobAge`` seconds) and the job
completion log (``jobcomp/filetxt``).

    with slurm_cluster(tmp_path) as cluster:   # pytest.skip(reason) where it cannot come up
        subprocess.run(["sbatch", ...], env=cluster.env)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "munged"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
"""``JobState`` values of a job that has ended (COMPLETING and a requeued job's PENDING have not)."""


@dataclass
class SlurmCluster:
    folder: Path
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o <id>`` as a dict (JobState, Restarts, ExitCode, ...); {} once gone."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        fields = {}
        for token in out.split():
            key, _, value = token.partition("=")
            fields.setdefault(key, value)
        return fields if "JobId" in fields else {}

    def wait_for(
        self, job_id: str, condition: Callable[[dict[str, str]], bool], what: str, timeout: float = 120
    ) -> dict[str, str]:
        """Poll :meth:`job` until ``condition(record)`` holds; the record, or TimeoutError naming
        ``what`` and the last record."""
        deadline = time.time() + timeout
        while not condition(record := self.job(job_id)):
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id}: not {what} after {timeout:.0f} s; its record: {record}")
            time.sleep(0.5)
        return record

    def wait_for_end(self, job_id: str, timeout: float = 120) -> dict[str, str]:
        """The job's record once it has ended (one of :data:`ENDED`)."""
        return self.wait_for(
            job_id, lambda r: r.get("JobState") in ENDED, f"ended ({'/'.join(ENDED)})", timeout
        )

    @property
    def completion_log(self) -> str:
        path = self.folder / "jobcomp.txt"
        return path.read_text() if path.is_file() else ""

    def record(self, *job_ids: str, tail: int = 4000) -> str:
        """The scheduler's side of what happened, for a failing test's message: ``scontrol show job``
        of each job, the job completion log (one line per attempt: a requeued attempt is listed with
        its exit code) and the ends of the daemons' logs."""
        parts = [self.run("scontrol", "show", "job", job_id, check=False) for job_id in job_ids]
        parts.append(f"--- job completion log\n{self.completion_log}")
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.folder / name
            if path.is_file():
                parts.append(f"--- {name} (end)\n{path.read_text()[-tail:]}")
        return "\n".join(parts)


def _install_packages() -> str | None:
    """apt-get the packages when a binary is missing; the reason they are unavailable, or None."""
    if all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES):
        return None
    if not shutil.which("apt-get"):
        return f"SLURM binaries missing ({', '.join(BINARIES)}) and no apt-get to install {PACKAGES}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {(proc.stdout + proc.stderr)[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_conf(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"; leave some memory to the OS.
    fields = dict(token.split("=", 1) for token in node.split())
    fields["RealMemory"] = str(max(512, int(fields["RealMemory"]) - 1024))
    ctld, slurmd = _free_port(), _free_port()
    for name in ("state", "spool"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=crnntest",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                f"AuthInfo=socket={folder / 'munge.socket'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                f"SlurmctldPort={ctld}",
                f"SlurmdPort={slurmd}",
                f"StateSaveLocation={folder / 'state'}",
                f"SlurmdSpoolDir={folder / 'spool'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'slurmctld.log'}",
                f"SlurmdLogFile={folder / 'slurmd.log'}",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/filetxt",
                f"JobCompLoc={folder / 'jobcomp.txt'}",
                "ReturnToService=2",
                "KillWait=5",
                "MinJobAge=600",
                "JobRequeue=1",
                "MpiDefault=none",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={fields['CPUs']} RealMemory={fields['RealMemory']}"
                " State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf


def _start_munge(folder: Path) -> int:
    """munged (the distribution's key) with its own socket in ``folder``; returns its pid."""
    socket_path = folder / "munge.socket"
    pidfile = folder / "munged.pid"
    proc = subprocess.run(
        [
            "munged",
            "--force",
            f"--socket={socket_path}",
            f"--pid-file={pidfile}",
            f"--log-file={folder / 'munged.log'}",
            f"--seed-file={folder / 'munged.seed'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"munged: {proc.stdout}{proc.stderr}")
    return _wait_for_pid(pidfile, "munged")


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_for_pid(pidfile: Path, daemon: str) -> int:
    """The pid a daemon wrote; it creates the file before it writes the pid there."""
    _wait(lambda: _read_pid(pidfile) is not None, 30, f"{daemon} wrote no pid to {pidfile}")
    return _read_pid(pidfile)  # type: ignore[return-value]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[SlurmCluster]:
    """Bring the cluster up in ``folder`` (skipping the test with the reason where it cannot), yield
    it, then stop every daemon it started."""
    if os.geteuid() != 0:
        pytest.skip("a test SLURM cluster needs root (its daemons run as root here)")
    reason = _install_packages()
    if reason:
        pytest.skip(reason)
    folder.mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(folder, env={})
    try:
        munge_pid = _start_munge(folder)
        cluster.pids.append(munge_pid)
        conf = _write_conf(folder)
        cluster.env = {**os.environ, "SLURM_CONF": str(conf)}  # clients and the jobs' own srun
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run(
                [daemon, "-f", str(conf)], env=cluster.env, capture_output=True, text=True, timeout=60
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{daemon}: {proc.stdout}{proc.stderr}")
            cluster.pids.append(_wait_for_pid(folder / f"{daemon}.pid", daemon))
        _wait(
            lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%T", check=False),
            60,
            "the node did not become idle",
        )
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as err:
        logs = {p.name: p.read_text()[-800:] for p in folder.glob("*.log") if p.is_file()}
        _stop(cluster.pids)
        pytest.skip(f"the SLURM cluster did not come up: {err}; logs: {logs}")
    except BaseException:
        _stop(cluster.pids)
        raise
    try:
        yield cluster
    finally:
        for job_id in cluster.run("squeue", "-h", "-o", "%i", check=False).split():
            cluster.run("scancel", job_id, check=False)
        _stop(cluster.pids)


def _stop(pids: list[int]) -> None:
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    for pid in reversed(pids):
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
