"""crnn-tables on multirun folders made here: fake-but-realistic jobs (a failed one, a job folder
without metrics.json, a planned job never started, a running one) and a real 2-job sweep; each run
counted once; the sweep status mode."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

import pytest
from conftest import cifar_overrides, compose
from omegaconf import OmegaConf, open_dict

from crnn.results import TablesError, make_tables, metric_value, pareto_front, read_wandb
from crnn.results.cli import main
from crnn.results.read import planned_jobs

# Complexity of the real models (crnn-profile), so the fake jobs carry realistic numbers.
COMPLEXITY = {
    "none": (278_324, 40_818_944),
    "srnn": (221_108, 37_148_928),
    "sws_birnn": (221_108, 38_197_504),
}
ACC = {
    ("none", 0): 0.671,
    ("none", 1): 0.665,
    ("srnn", 0): 0.652,
    ("sws_birnn", 0): 0.684,
    ("sws_birnn", 1): 0.690,
}


def write_multirun_yaml(sweep: Path, task_overrides: list[str], params: dict | None = None) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    cfg = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": params,
            },
            "overrides": {"task": task_overrides},
        }
    }
    OmegaConf.save(OmegaConf.create(cfg), sweep / "multirun.yaml")


def write_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    status: str | None = "completed",
    acc: float | None = None,
    log_error: str | None = None,
    kind: str = "train",
) -> Path:
    """A job folder as Hydra + crnn-train write it: .hydra/{config,overrides,hydra}.yaml,
    metrics.json (or profile.json), the log."""
    from hydra.core.hydra_config import HydraConfig

    folder = sweep / f"{num}_job"
    cfg = compose(overrides, folder)
    choices = dict(HydraConfig.get().runtime.choices)
    job_cfg = cfg.copy()
    with open_dict(job_cfg):
        del job_cfg["hydra"]
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(job_cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    OmegaConf.save(
        OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), folder / ".hydra" / "hydra.yaml"
    )
    log_name = "train.log" if kind == "train" else "profile.log"
    (folder / log_name).write_text("[2026-01-01 00:00:00,000][crnn.train][INFO] - start\n")
    if log_error:
        with (folder / log_name).open("a") as f:
            f.write(f"[2026-01-01 00:00:01,000][crnn.train][ERROR] - {log_error}\n")
    rnn = choices["rnn"]
    params, macs = COMPLEXITY.get(rnn, (1, 1))
    picked = {k: choices.get(k) for k in ("data", "task", "backbone", "rnn", "head", "experiment")}
    picked["cell"] = cfg.rnn.get("cell")
    if kind == "profile":
        record = {
            "status": "completed",
            **picked,
            "params": params,
            "macs": macs,
            "overrides": overrides,
            "peak_activation_bytes": 339_968,
            "latency_ms": 12.5,
        }
        (folder / "profile.json").write_text(json.dumps(record))
    elif status is not None:
        metrics = {
            "status": status,
            **picked,
            "seed": cfg.seed,
            "params": params,
            "macs": macs,
            "wall_time_s": 12.0,
        }
        if acc is not None:
            metrics.update({"test/acc1": acc, "test/acc5": min(1.0, acc + 0.2), "val/acc1": acc - 0.01})
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def table_rows(md: str) -> list[list[str]]:
    """The cells of the first Markdown table in ``md`` (header and rule lines dropped)."""
    lines = [ln for ln in md.split("## Incomplete jobs")[0].splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> Path:
    """rnn=none,srnn,sws_birnn x seed=0,1: none complete; srnn seed 1 failed; sws_birnn seed 0
    complete, seed 1 still running; a 4th layer (sbirnn_cat) has a job folder without metrics.json
    and a planned job that never started."""
    sweep = tmp_path_factory.mktemp("sweep")
    write_multirun_yaml(sweep, ["rnn=none,srnn,sws_birnn,sbirnn_cat", "seed=0,1", "trainer.max_epochs=1"])
    jobs = [(r, s) for r in ("none", "srnn", "sws_birnn", "sbirnn_cat") for s in (0, 1)]
    for num, (rnn, seed) in enumerate(jobs[:-1]):  # the last planned job was never started
        overrides = [f"rnn={rnn}", f"seed={seed}", "trainer.max_epochs=1"]
        if (rnn, seed) == ("srnn", 1):
            write_job(sweep, num, overrides, status="failed", log_error="RuntimeError: NaN loss at step 3")
        elif (rnn, seed) == ("sws_birnn", 1):
            write_job(sweep, num, overrides, status="running")
        elif rnn == "sbirnn_cat":
            write_job(sweep, num, overrides, status=None, log_error="rnn=sbirnn_cat: out of memory")
        else:
            write_job(sweep, num, overrides, acc=ACC[(rnn, seed)])
    return sweep


def test_rows_one_per_configuration(fake_sweep, tmp_path):
    result = make_tables([fake_sweep], out_dir=tmp_path / "t")
    assert result.metric == "test/acc1"
    rows = {r["rnn"]: r for r in result.rows}
    assert [r["rnn"] for r in result.rows] == ["none", "srnn", "sws_birnn", "sbirnn_cat"]  # none first
    none = rows["none"]
    assert none["n"] == 2 and none["seeds"] == [0, 1]
    assert none["mean"] == pytest.approx(statistics.fmean([0.671, 0.665]))
    assert none["std"] == pytest.approx(statistics.stdev([0.671, 0.665]))
    assert (none["params"], none["macs"]) == COMPLEXITY["none"]
    assert rows["srnn"]["n"] == 1 and "1 failed" in rows["srnn"]["status"] and not rows["srnn"]["complete"]
    assert rows["sws_birnn"]["n"] == 1 and "1 running" in rows["sws_birnn"]["status"]  # partial table
    assert rows["sbirnn_cat"]["n"] == 0 and rows["sbirnn_cat"]["mean"] is None
    assert "1 no-metrics" in rows["sbirnn_cat"]["status"] and "1 pending" in rows["sbirnn_cat"]["status"]


def test_incomplete_jobs_are_listed_with_reasons(fake_sweep, tmp_path):
    result = make_tables([fake_sweep], out_dir=tmp_path / "t")
    md = result.files["markdown"].read_text()
    incomplete = md.split("## Incomplete jobs")[1]
    assert "(4)" in incomplete.splitlines()[0]
    for text in (
        "failed",
        "NaN loss at step 3",
        "running",
        "no-metrics",
        "out of memory",
        "pending",
        "planned, not started",
    ):
        assert text in incomplete, text
    assert "67.10" not in incomplete
    # the main table: mean ± std in %, seeds, status; best of the group in bold
    rows = table_rows(md)
    assert rows[0] == ["resnet20", "none", "0.28M", "40.82M", "66.80 ± 0.42", "2", "2 completed"]
    assert rows[2][1:] == ["sws_birnn", "0.22M", "38.20M", "**68.40**", "1", "1 completed, 1 running"]
    assert rows[3] == ["", "sbirnn_cat", "-", "-", "-", "0", "1 no-metrics, 1 pending"]
    assert "partial: 4 not completed" in md and "best checkpoint" in md  # partial sweep, caption
    statuses = [row["status"] for row in csv.DictReader(result.files["jobs"].open())]
    assert sorted(statuses) == sorted(["completed"] * 4 + ["failed", "running", "no-metrics", "pending"])


def test_csv_latex_and_plots(fake_sweep, tmp_path):
    result = make_tables([fake_sweep], out_dir=tmp_path / "t")
    rows = list(csv.DictReader(result.files["csv"].open()))
    assert [r["rnn"] for r in rows] == ["none", "srnn", "sws_birnn", "sbirnn_cat"]
    assert (
        float(rows[0]["mean"]) == pytest.approx(0.668)
        and rows[0]["n"] == "2"
        and rows[0]["macs"] == "40818944"
    )
    tex = result.files["latex"].read_text()
    assert "\\toprule" in tex and "sws\\_birnn" in tex and "66.80 $\\pm$ 0.42" in tex
    assert "\\textbf{68.40}" in tex and "best checkpoint" in tex
    for key in ("plot_macs", "plot_params"):
        png = result.files[key]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_default_output_folder_and_cli(fake_sweep, capsys):
    main([str(fake_sweep), "--metric", "val/acc1"])
    out = capsys.readouterr().out
    assert "# val/acc1: 4 configurations" in out
    assert (fake_sweep / "tables" / "table.md").is_file() and (
        fake_sweep / "tables" / "val_acc1_vs_macs.png"
    ).is_file()
    with pytest.raises(SystemExit) as err:
        main([str(fake_sweep / "nope")])
    assert err.value.code == 2
    assert "no such folder" in capsys.readouterr().err


def test_profile_sweep_adds_memory_and_latency(fake_sweep, tmp_path):
    prof = tmp_path / "prof"
    write_multirun_yaml(prof, ["rnn=none,sws_birnn"])
    write_job(prof, 0, ["rnn=none"], kind="profile")
    write_job(prof, 1, ["rnn=sws_birnn"], kind="profile")
    result = make_tables([fake_sweep, prof], out_dir=tmp_path / "t")
    rows = {r["rnn"]: r for r in result.rows}
    assert len(result.rows) == 4  # joined to the trained configurations (different recipes ignored)
    assert rows["none"]["peak_activation_bytes"] == 339_968 and rows["sws_birnn"]["latency_ms"] == 12.5
    assert rows["srnn"]["peak_activation_bytes"] is None
    assert "peak act. (KiB)" in result.markdown and "332.0" in result.markdown
    # a profile sweep alone: the complexity table, no metric
    alone = make_tables([prof], out_dir=tmp_path / "p")
    assert alone.markdown.startswith("# Complexity: 2 configurations") and "test/acc1" not in alone.markdown


def test_varying_settings_become_columns(tmp_path):
    sweep = tmp_path / "cells"
    write_multirun_yaml(sweep, ["rnn=sws_birnn", "rnn.cell=gru,lstm", "seed=0,1"])
    for num, (cell, seed) in enumerate([("gru", 0), ("gru", 1), ("lstm", 0), ("lstm", 1)]):
        write_job(sweep, num, ["rnn=sws_birnn", f"rnn.cell={cell}", f"seed={seed}"], acc=0.6 + 0.01 * num)
    result = make_tables([sweep], out_dir=tmp_path / "t")
    assert [r["settings"]["rnn.cell"] for r in result.rows] == ["gru", "lstm"]
    assert all(r["n"] == 2 for r in result.rows)
    header = next(ln for ln in result.markdown.splitlines() if ln.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["backbone", "rnn", "rnn.cell"]
    assert "None: every job completed." in result.markdown


def test_detection_metric_is_val_ap(tmp_path):
    sweep = tmp_path / "det"
    write_multirun_yaml(sweep, ["rnn=none,srnn"])
    for num, rnn in enumerate(["none", "srnn"]):
        folder = write_job(sweep, num, [f"rnn={rnn}"], acc=None)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics.update({"val/AP": 0.2 + num / 100, "val/AP50": 0.4})
        (folder / "metrics.json").write_text(json.dumps(metrics))
    result = make_tables([sweep], out_dir=tmp_path / "t", plots=False)
    assert result.metric == "val/AP" and [r["mean"] for r in result.rows] == pytest.approx([0.2, 0.21])


def test_pareto_front():
    pts = [(1.0, 60.0), (2.0, 65.0), (2.5, 64.0), (3.0, 70.0), (3.0, 69.0), (4.0, 68.0)]
    assert pareto_front(pts) == [(1.0, 60.0), (2.0, 65.0), (3.0, 70.0)]


def test_wandb_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(TablesError, match="offline.*cannot be reached"):
        read_wandb("me/crnn", "cifar100_last_block")


def test_wandb_runs_logged_by_crnn_train_become_rows(tmp_path):
    """The layout crnn-train gives W&B (``logger_config``: choices at the top, the config under
    ``cfg``): runs that differ in their cell or their learning rate are different rows."""
    from crnn.callbacks.record import logger_config

    class Run:
        def __init__(self, i, cell, lr, acc):
            self.id, self.state = f"run{i}", "finished"
            cfg = {
                "seed": i,
                "rnn": {"_target_": "crnn.layers.SRNN", "cell": cell},
                "backbone": {"depth": 20},
                "head": {"dropout": 0.0},
                "task": {"optimizer": {"lr": lr}},
                "trainer": {"max_epochs": 5},
            }
            picked = {
                "data": "cifar100",
                "backbone": "resnet20",
                "rnn": "srnn",
                "cell": cell,
                "head": "linear",
            }
            self.config = logger_config(cfg, picked)
            self.summary = {"params": 1, "macs": 1, "test/acc1": acc}

    class Api:
        def runs(self, path, filters=None):
            return [Run(0, "rnn_tanh", 0.1, 0.5), Run(1, "rnn_relu", 0.1, 0.6), Run(2, "rnn_tanh", 0.05, 0.7)]

    result = make_tables([], out_dir=tmp_path / "t", wandb_project="me/crnn", api=Api())
    assert sorted((r["cell"], r["n"]) for r in result.rows) == [
        ("rnn_relu", 1),
        ("rnn_tanh", 1),
        ("rnn_tanh", 1),
    ]


def test_wandb_runs_become_rows(tmp_path):
    class Summary(dict):
        @property
        def _json_dict(self):
            return dict(self)

    class Run:
        def __init__(self, i, rnn, seed, state, acc):
            self.id, self.state = f"run{i}", state
            self.config = {
                "seed": seed,
                "choices": {"data": "cifar100", "backbone": "resnet20", "rnn": rnn, "head": "linear"},
                "rnn": {"name": rnn},
                "backbone": {"depth": 20},
                "head": {"dropout": 0.0},
            }
            self.summary = Summary(
                {
                    "params": COMPLEXITY[rnn][0],
                    "macs": COMPLEXITY[rnn][1],
                    "_step": 3,
                    **({"test/acc1": acc} if acc is not None else {}),
                }
            )

    class Api:
        def runs(self, path, filters=None):
            assert path == "me/crnn" and filters == {"group": "g"}
            return [
                Run(0, "none", 0, "finished", 0.6),
                Run(1, "none", 1, "finished", 0.62),
                Run(2, "srnn", 0, "crashed", None),
            ]

    result = make_tables([], out_dir=tmp_path / "t", wandb_project="me/crnn", wandb_group="g", api=Api())
    assert [(r["rnn"], r["n"]) for r in result.rows] == [("none", 2), ("srnn", 0)]
    assert "failed" in result.rows[1]["status"] and "W&B state crashed" in result.markdown

    # the run folder of W&B run "run0" given too: the same run, counted once (the folder's record)
    sweep = tmp_path / "sweep"
    folder = write_job(sweep, 0, ["rnn=none", "seed=0"], acc=0.6)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "wandb_id": "run0"}))
    both = make_tables([sweep], out_dir=tmp_path / "t2", wandb_project="me/crnn", wandb_group="g", api=Api())
    assert len(both.jobs) == 3 and both.jobs[0].source == str(folder)
    assert sum(r["n"] for r in both.rows if r["rnn"] == "none") == 2  # not 3


def test_real_two_job_sweep(tmp_path, cifar_root, monkeypatch):
    """``crnn-train -m rnn=none,srnn`` on the fixture data (in process), then the tables."""
    from hydra.core.global_hydra import GlobalHydra

    import crnn.train

    sweep = tmp_path / "sweep"
    overrides = cifar_overrides(
        cifar_root,
        "rnn=none,srnn",
        "callbacks=none",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "print_config=false",
    )
    monkeypatch.setattr(sys, "argv", ["crnn-train", "-m", *overrides, f"hydra.sweep.dir={sweep}"])
    GlobalHydra.instance().clear()
    try:
        crnn.train.main()
    finally:
        GlobalHydra.instance().clear()
    metrics = {
        json.loads(p.read_text())["rnn"]: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")
    }
    assert set(metrics) == {"none", "srnn"}
    result = make_tables([sweep])
    assert result.files["markdown"] == sweep / "tables" / "table.md"
    rows = {r["rnn"]: r for r in result.rows}
    for rnn, m in metrics.items():
        assert rows[rnn]["n"] == 1 and rows[rnn]["mean"] == pytest.approx(m["test/acc1"])
        assert (rows[rnn]["params"], rows[rnn]["macs"]) == (m["params"], m["macs"])
    assert "None: every job completed." in result.markdown
    assert result.files["plot_macs"].is_file()


# ------------------------------------------------------------------ each run once, failures, status


def test_each_run_counted_once_whatever_folders_are_given(fake_sweep, tmp_path):
    link = tmp_path / "outer" / "link"
    link.parent.mkdir()
    link.symlink_to(fake_sweep, target_is_directory=True)
    once = make_tables([fake_sweep], out_dir=tmp_path / "once", plots=False)
    for sources in (
        [fake_sweep, fake_sweep],  # the same sweep twice
        [fake_sweep, fake_sweep / "0_job", fake_sweep / "1_job"],  # a sweep and some of its jobs
        [link, fake_sweep],  # through a symlink
        [link.parent, fake_sweep],  # a folder above the sweep (overlapping)
    ):
        result = make_tables(sources, out_dir=tmp_path / "t", plots=False)
        none = next(r for r in result.rows if r["rnn"] == "none")
        assert (none["n"], none["std"]) == (2, pytest.approx(statistics.stdev([0.671, 0.665]))), sources
        assert len(result.jobs) == len(once.jobs) == 8, sources


def test_a_copied_run_folder_is_the_same_run(tmp_path):
    """Two folders carrying the same run id (a copy, a re-read) are one run; other ids are not."""
    sweep = tmp_path / "sweep"
    write_multirun_yaml(sweep, ["rnn=none", "seed=0,1"])
    for num in range(2):
        folder = write_job(sweep, num, ["rnn=none", f"seed={num}"], acc=0.6 + num / 10)
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "wandb_id": f"id{num}"}))
    copy = tmp_path / "elsewhere" / "0_copy"
    copy.parent.mkdir()
    import shutil

    shutil.copytree(sweep / "0_job", copy)
    result = make_tables([sweep, copy.parent], out_dir=tmp_path / "t", plots=False)
    assert [(r["n"], r["seeds"]) for r in result.rows] == [(2, [0, 1])]


def _failed_sweep(tmp_path: Path) -> Path:
    """3 jobs: completed, failed (metrics.json with error_type / error / traceback), queued."""
    sweep = tmp_path / "failing"
    write_multirun_yaml(sweep, ["rnn=none,srnn,sws_birnn"])
    write_job(sweep, 0, ["rnn=none"], acc=0.6)
    folder = write_job(sweep, 1, ["rnn=srnn"], status="failed")
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(
        error_type="FloatingPointError",
        error="non-finite loss\nat epoch 2, step 7",
        traceback=str(folder / "traceback.txt"),
    )
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return sweep


def test_failed_jobs_shown_as_failed(tmp_path):
    sweep = _failed_sweep(tmp_path)
    result = make_tables([sweep], out_dir=tmp_path / "t", plots=False)
    rows = {r["rnn"]: r for r in result.rows}
    assert rows["srnn"]["status"] == "1 failed" and rows["srnn"]["mean"] is None
    assert rows["sws_birnn"]["status"] == "1 pending"
    incomplete = result.markdown.split("## Incomplete jobs")[1]
    assert "FloatingPointError: non-finite loss at epoch 2, step 7" in incomplete  # one line
    assert f"traceback: {sweep / '1_job' / 'traceback.txt'}" in incomplete
    assert "partial: 2 not completed" in result.markdown


def test_status_mode(tmp_path, capsys):
    sweep = _failed_sweep(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["--status", str(sweep), str(sweep)])
    assert err.value.code == 1  # a job failed
    out = capsys.readouterr().out
    assert f"{sweep}: 3 jobs: 1 completed, 0 running, 1 queued, 1 failed" in out
    failed = out.split("Failed jobs:")[1]
    assert "resnet20-srnn-linear" in failed and "FloatingPointError: non-finite loss" in failed
    assert not (sweep / "tables").exists()  # status writes nothing


def test_status_mode_of_a_running_sweep(fake_sweep, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--status", str(fake_sweep)])
    assert err.value.code == 1
    out = capsys.readouterr().out
    # the job folder without metrics.json whose log holds an error counts as failed
    assert ": 8 jobs: 4 completed, 1 running, 1 queued, 2 failed" in out
    assert "NaN loss at step 3" in out and "out of memory" in out
    running = out.split("Running jobs:")[1]
    assert "5_job [resnet20-sws_birnn-linear" in running and "last wrote" in running
    assert "6_job" not in running  # counted as failed (its log holds an error)


def test_status_mode_all_completed_exits_zero(tmp_path, capsys):
    sweep = tmp_path / "ok"
    write_multirun_yaml(sweep, ["rnn=none"])
    write_job(sweep, 0, ["rnn=none"], acc=0.5)
    with pytest.raises(SystemExit) as err:
        main(["--status", str(sweep)])
    assert err.value.code == 0
    assert "1 job: 1 completed, 0 running, 0 queued, 0 failed" in capsys.readouterr().out


def test_best_and_last_metrics_read_tolerantly():
    assert metric_value({"test/acc1": 0.5}, "test/acc1") == 0.5
    assert metric_value({"val/acc1": 0.4, "val/acc1_best": 0.6}, "val/acc1") == 0.6
    assert metric_value({"best": {"val/AP": 0.3}, "last": {"val/AP": 0.2}, "val/AP": 0.2}, "val/AP") == 0.3
    assert metric_value({"test/acc1": None, "test/acc1_note": "non-finite"}, "test/acc1") is None
    assert metric_value({"test/acc1": float("nan")}, "test/acc1") is None
    assert metric_value({"test/acc1": True}, "test/acc1") is None


def test_planned_jobs_are_the_basic_sweepers_product(tmp_path):
    sweep = tmp_path / "plan"
    write_multirun_yaml(sweep, ["seed=0,1", "trainer.max_epochs=3"], params={"rnn": "none,srnn"})
    assert planned_jobs(sweep) == [
        ["rnn=none", "seed=0", "trainer.max_epochs=3"],
        ["rnn=none", "seed=1", "trainer.max_epochs=3"],
        ["rnn=srnn", "seed=0", "trainer.max_epochs=3"],
        ["rnn=srnn", "seed=1", "trainer.max_epochs=3"],
    ]
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"_target_": "optuna"}}}), sweep / "multirun.yaml")
    assert planned_jobs(sweep) is None  # another sweeper: the plan is unknown


def test_groups_by_backbone_in_paper_order():
    """Rows sorted by backbone then paper layer order (registry), a rule between backbone groups."""
    from crnn.results import Job, build_rows
    from crnn.results.render import latex, markdown

    def job(i, backbone, rnn, acc):
        choices = {"data": "cifar100", "backbone": backbone, "rnn": rnn, "head": "linear"}
        metrics = {"status": "completed", "test/acc1": acc, "params": 200_000, "macs": 4e7}
        return Job(f"j{i}", "completed", f"id{i}", choices, 0, dict(choices), {}, metrics)

    jobs = [job(0, "resnet56", "sws_birnn", 0.7), job(1, "resnet20", "sws_birnn", 0.6)]
    jobs += [
        job(2, "resnet20", "none", 0.5),
        job(3, "resnet56", "none", 0.72),
        job(4, "resnet20", "xyz", 0.1),
    ]
    rows, varying = build_rows(jobs, "test/acc1")
    assert [(r["backbone"], r["rnn"]) for r in rows] == [
        ("resnet20", "none"),
        ("resnet20", "sws_birnn"),
        ("resnet20", "xyz"),  # unknown to the registry: after the known layers
        ("resnet56", "none"),
        ("resnet56", "sws_birnn"),
    ]
    tex = latex(rows, varying, "test/acc1", 100).splitlines()
    body = tex[tex.index("\\midrule") + 1 : tex.index("\\bottomrule")]
    assert body[3] == "\\midrule" and body[4].startswith("resnet56 & none") and "\\textbf{72.00}" in body[4]
    assert body[0].startswith("resnet20 & none") and body[1].startswith(" & sws\\_birnn")
    md = markdown(rows, varying, "test/acc1", 100)
    assert "**60.00**" in md and "**72.00**" in md


def test_console_scripts_resolve():
    """``crnn-tables`` and ``crnn-profile`` in pyproject point at functions that exist."""
    import importlib
    import re

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for name in ("crnn-tables", "crnn-profile"):
        module, func = re.search(rf'^{name} = "([\w.]+):(\w+)"$', text, re.M).groups()
        assert callable(getattr(importlib.import_module(module), func)), name
