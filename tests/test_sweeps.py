"""Sweep machinery: launcher and search configs compose, sweeps run several jobs at once through
hydra-joblib-launcher and submitit's local executor, the Optuna study's n_trials is a total, and
the failure summary reads a sweep folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, cifar_overrides, compose, run_module
from hydra.utils import get_class
from omegaconf import OmegaConf

from crnn.results.read import read_sweep
from crnn.sweeps.callbacks import FailureSummary, JobDevices, devices_for_job, threads_for

PLUGINS = {
    "hydra_submitit_launcher": "hydra-submitit-launcher",
    "hydra_joblib_launcher": "hydra-joblib-launcher",
    "hydra_optuna_sweeper": "hydra-optuna-sweeper",
}
missing = [pip for module, pip in PLUGINS.items() if not importlib.util.find_spec(f"hydra_plugins.{module}")]
needs_plugins = pytest.mark.skipif(
    bool(missing), reason=f"not installed: {', '.join(missing)} (pip install -e '.[cluster]')"
)

LAUNCHERS = sorted(p.stem for p in (ROOT / "conf" / "hydra" / "launcher").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml"))


@needs_plugins
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_composes(launcher, tmp_path, cifar_root):
    cfg = compose(cifar_overrides(cifar_root, f"hydra/launcher={launcher}"), tmp_path)
    node = cfg.hydra.launcher
    assert get_class(node._target_).__name__.endswith("Launcher")
    if launcher.startswith("submitit"):
        assert node.tasks_per_node == 1 and node.submitit_folder.startswith(str(cfg.hydra.sweep.dir))
    if launcher == "submitit_slurm":
        assert node.gpus_per_node >= 1 and node.cpus_per_task >= 1 and node.mem_gb > 0
        assert node.array_parallelism > 0 and node.max_num_timeout > 0


@needs_plugins
def test_slurm_partition_and_account_from_the_environment(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setenv("CRNN_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("CRNN_SLURM_ACCOUNT", "lab42")
    cfg = compose(cifar_overrides(cifar_root, "hydra/launcher=submitit_slurm"), tmp_path)
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.account) == ("gpu-a100", "lab42")
    monkeypatch.delenv("CRNN_SLURM_PARTITION")
    cfg = compose(cifar_overrides(cifar_root, "hydra/launcher=submitit_slurm"), tmp_path)
    assert cfg.hydra.launcher.partition is None


@needs_plugins
@pytest.mark.parametrize("search", SEARCHES)
def test_search_preset_composes(search, tmp_path, cifar_root):
    data = ["data=synthetic_shapes", "logger=none"] if "coco" in search else cifar_overrides(cifar_root)
    cfg = compose([*data, f"hparams_search={search}"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert get_class(sweeper._target_).__name__ == "TotalTrialsOptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.task.monitor_mode == "max"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    for key in sweeper.params:  # every searched key exists in the composed config
        assert key in ("seed",) or _has(cfg, key), key


def _has(cfg, dotted: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, dotted, default="<missing>") != "<missing>"


def test_threads_per_job_follow_the_launcher():
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    assert threads_for({**joblib, "n_jobs": 2}, cpu_count=16) == 8
    assert threads_for({**joblib, "n_jobs": 3}, cpu_count=2) == 1
    assert threads_for({**joblib, "n_jobs": -1}, cpu_count=16) == 1
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    assert threads_for({**slurm, "cpus_per_task": 6}, cpu_count=64) == 6
    assert threads_for({**slurm, "cpus_per_task": None}, cpu_count=64) is None
    assert threads_for({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8) is None


def _job(sweep: Path, name: str, metrics: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_each_local_job_gets_its_own_gpus(monkeypatch):
    """Round robin over groups of ``gpus_per_job`` of the visible GPUs, by job number."""
    assert [devices_for_job(["0", "1", "2", "3"], k, 1) for k in range(5)] == [
        ["0"],
        ["1"],
        ["2"],
        ["3"],
        ["0"],
    ]
    assert [devices_for_job(["4", "5", "6", "7"], k, 2) for k in range(3)] == [
        ["4", "5"],
        ["6", "7"],
        ["4", "5"],
    ]
    assert devices_for_job(["0", "1"], 3, 2) == ["0", "1"]  # one group: every job sees both
    for num, expected in ((0, "2"), (1, "3"), (2, "2")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
        JobDevices(gpus_per_job=1).on_job_start(OmegaConf.create({"hydra": {"job": {"num": num}}}))
        assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    JobDevices(gpus_per_job=None).on_job_start(OmegaConf.create({"hydra": {"job": {"num": 1}}}))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # null: jobs share the GPUs
    with pytest.raises(ValueError, match="gpus_per_job"):
        JobDevices(gpus_per_job=0)


def test_failure_summary_lists_the_jobs_that_did_not_complete(tmp_path, caplog):
    """The callback prints crnn-tables --status's report, reading the error keys crnn-train writes
    (:func:`crnn.lifecycle.outcome_of`)."""
    from omegaconf import OmegaConf

    from crnn.errors import ConfigError
    from crnn.lifecycle import outcome_of

    sweep = tmp_path / "sweep"
    _job(sweep, "0_a", {"status": "completed", "val/acc1": 0.5})
    _job(sweep, "1_b", None)
    _job(sweep, "2_c", None)
    _job(sweep, "3_d", None)
    _job(sweep, "10_e", {"status": "completed"})
    for name, err, received in (
        ("1_b", ConfigError("rnn.cell=foo: no such cell"), {}),
        ("2_c", RuntimeError("CUDA out of memory\nmore lines"), {}),
        ("3_d", None, {"signal": "SIGTERM"}),
    ):
        (sweep / name / "metrics.json").write_text(json.dumps(outcome_of(err, received, sweep / name)))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with caplog.at_level("INFO", logger="crnn.sweeps"), pytest.raises(SystemExit) as exit_:
        FailureSummary(exit_code=1).on_multirun_end(config)
    assert exit_.value.code == 1
    text = caplog.text
    assert f"Sweep {sweep}: 5 jobs: 2 completed, 0 running, 0 queued, 2 failed, 1 interrupted" in text
    assert "1_b [None-None-None, seed None]: ConfigError: rnn.cell=foo: no such cell" in text
    assert f"RuntimeError: CUDA out of memory (traceback: {sweep / '2_c' / 'error.txt'})" in text
    assert "3_d [None-None-None, seed None]: SIGTERM" in text
    FailureSummary(exit_code=0).on_multirun_end(config)  # reporting only


def test_failure_summary_is_quiet_on_a_completed_sweep(tmp_path):
    from omegaconf import OmegaConf

    _job(tmp_path, "0_a", {"status": "completed"})
    FailureSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    FailureSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "no")}}}))


# ----------------------------------------------------------------------------- real sweeps (CLI)
TINY = (
    "rnn=none",
    "callbacks=none",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "test_after_fit=false",
)


def crnn_train(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_module("crnn.train", *args, cwd=cwd, timeout=timeout)


def _log_span(job: Path) -> tuple[datetime, datetime]:
    """First and last timestamp of a job's train.log (``[2026-01-01 12:00:00,123][...]`` lines)."""
    stamps = [
        datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
        for line in (job / "train.log").read_text().splitlines()
        if line.startswith("[20")
    ]
    return stamps[0], stamps[-1]


def _check_2x2_sweep(sweep: Path) -> list[dict]:
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1", "2", "3"], list(sweep.iterdir())
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    assert all(m["status"] == "completed" for m in metrics), metrics
    assert sorted((m["seed"], m["head"]) for m in metrics) == [
        (0, "linear"),
        (0, "sequence"),
        (1, "linear"),
        (1, "sequence"),
    ]
    for job, m in zip(jobs, metrics, strict=True):  # each its own W&B offline run
        runs = list(job.glob("wandb/offline-run-*"))
        assert len(runs) == 1 and m["wandb_id"] in runs[0].name, (job, runs)
    return metrics


def _ran_two_at_once(sweep: Path) -> bool:
    spans = [_log_span(p.parent) for p in sorted(sweep.glob("*/train.log"))]
    return any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


@needs_plugins
@pytest.mark.parametrize(
    "launcher",
    [
        ("hydra/launcher=parallel", "hydra.launcher.n_jobs=2"),
        # submitit starts a whole batch at once: batches of 2, one torch thread per job. Slow: the
        # same engine runs every test_slurm.py job; `parallel` keeps a fast 2-at-once sweep.
        pytest.param(
            (
                "hydra/launcher=submitit_local",
                "hydra.sweeper.max_batch_size=2",
                "hydra.launcher.cpus_per_task=1",
            ),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["parallel", "submitit_local"],
)
def test_2x2_sweep_two_jobs_at_once(launcher, tmp_path, cifar_root):
    sweep = tmp_path / "sweep"
    proc = crnn_train(
        "-m",
        *cifar_overrides(cifar_root, *TINY, "logger=wandb", "head=linear,sequence", "seed=0,1"),
        *launcher,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    _check_2x2_sweep(sweep)
    assert _ran_two_at_once(sweep)
    assert "4 jobs: 4 completed" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- Optuna
def _study(sweep: Path):
    import optuna

    return optuna.load_study(study_name="cifar100_optuna", storage=f"sqlite:///{sweep}/optuna.db")


@needs_plugins
def test_optuna_relaunch_runs_only_the_missing_trials(tmp_path, cifar_root):
    sweep = tmp_path / "search"
    search = (
        *cifar_overrides(cifar_root, *TINY),
        "hparams_search=cifar100_optuna",
        "rnn=srnn",  # a layer with a hidden width to search
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
    )
    first = crnn_train(*search, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert len(_study(sweep).trials) == 3
    assert sorted(p.parent.name.split("_")[0] for p in sweep.glob("*/metrics.json")) == ["0", "1", "2"]

    # Same total: nothing to run. One more: only trial 3, in its own folder.
    again = crnn_train(*search, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "3 of 3 trials finished (0 failed); running 0" in again.stdout + again.stderr
    more = crnn_train(*search, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert more.returncode == 0, (more.stdout + more.stderr)[-3000:]
    assert "3 of 4 trials finished (0 failed); running 1" in more.stdout + more.stderr
    trials = _study(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert trials[3].params not in [t.params for t in trials[:3]]  # a new point, not a replay
    jobs = sorted(sweep.glob("*/metrics.json"), key=lambda p: int(p.parent.name.split("_")[0]))
    assert [p.parent.name.split("_")[0] for p in jobs] == ["0", "1", "2", "3"]
    for trial, path in zip(trials, jobs, strict=True):  # each trial's value is its run's val/acc1
        assert trial.value == pytest.approx(json.loads(path.read_text())["val/acc1"])
        config = (path.parent / ".hydra" / "overrides.yaml").read_text()
        assert f"task.optimizer.lr={trial.params['task.optimizer.lr']}" in config


# ----------------------------------------------------------------------------- failure isolation
@pytest.mark.slow
@needs_plugins
def test_parallel_sweep_survives_a_failing_job_and_relaunch_reruns_only_it(tmp_path, cifar_root):
    sweep = tmp_path / "sweep"
    args = (
        "-m",
        *cifar_overrides(cifar_root, *[t for t in TINY if t not in ("rnn=none", "callbacks=none")]),
        "rnn=srnn",
        "rnn.cell=gru,no_such_cell,lstm",  # the middle job's layer cannot be built
        "hydra/launcher=parallel",
        f"hydra.sweep.dir={sweep}",
    )
    first = crnn_train(*args, cwd=tmp_path)
    output = first.stdout + first.stderr
    assert first.returncode != 0, output[-3000:]
    assert "3 jobs: 2 completed, 0 running, 0 queued, 1 failed" in output, output[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    assert [m["status"] for m in metrics] == ["completed", "failed", "completed"], metrics
    assert any("no_such_cell" in (job.error or "") for job in read_sweep(sweep))

    stamps = [(p / "metrics.json").stat().st_mtime_ns for p in jobs]
    again = crnn_train(*args, cwd=tmp_path)
    assert again.returncode != 0
    after = [(p / "metrics.json").stat().st_mtime_ns for p in jobs]
    assert after[0] == stamps[0] and after[2] == stamps[2]  # completed jobs skipped
    assert after[1] != stamps[1]  # the failed one ran again


@needs_plugins
def test_launcher_schema_note_is_quiet_unless_asked(tmp_path, cifar_root, monkeypatch):
    """Hydra's note that conf/hydra/launcher/submitit_slurm.yaml is checked against the plugin's schema
    of the same name is filtered by crnn's entry points; CRNN_SHOW_ALL_WARNINGS=1 shows it again."""
    import warnings

    from crnn.runtime import quiet_known_noise

    def schema_notes(show_all: str | None) -> int:
        if show_all:
            monkeypatch.setenv("CRNN_SHOW_ALL_WARNINGS", show_all)
        else:
            monkeypatch.delenv("CRNN_SHOW_ALL_WARNINGS", raising=False)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_known_noise()
            compose(cifar_overrides(cifar_root, "hydra/launcher=submitit_slurm"), tmp_path)
        return sum("ConfigStore schema with the same name" in str(w.message) for w in seen)

    assert schema_notes("1") == 1
    assert schema_notes(None) == 0
