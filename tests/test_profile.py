"""crnn-profile: numbers equal crnn.complexity, the tensor arena is exact on hand-sized models,
sweeps give one profile.json per job and a table; experiment presets compose and expand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, cifar_overrides, compose
from hydra.utils import instantiate
from torch import nn

from crnn import complexity
from crnn.builders import build_model, build_task
from crnn.complexity import activation_memory, cpu_latency, module_table
from crnn.profile import module_rows_text, profile, write_sweep_table
from crnn.results.read import expand_sweep

FAST = ["profile.latency.repeats=3", "profile.latency.warmup=1"]


def _profile_cfg(tmp_path: Path, *overrides: str):
    missing = tmp_path / "no_data_here"
    return compose([f"data.root={missing}", "logger=none", *overrides], tmp_path), missing


@pytest.mark.parametrize("rnn", ["none", "sws_birnn"])
def test_profile_numbers_equal_complexity(rnn, tmp_path):
    cfg, missing = _profile_cfg(tmp_path, f"rnn={rnn}")
    from omegaconf import open_dict

    with open_dict(cfg):  # conf/train.yaml composed: add the profile settings of conf/profile.yaml
        cfg.profile = {"batch_size": 1, "memory": True, "latency": {"repeats": 3, "warmup": 1, "threads": 1}}
    record = profile(cfg)

    task = build_task(cfg, instantiate(cfg.data))
    module, inputs = task.complexity_inputs()
    assert record["params"] == complexity.count_params(module)
    assert record["macs"] == complexity.count_macs(module, *inputs)
    root = record["modules"][0]
    assert root["name"] == "" and root["macs"] == record["macs"] and root["params"] == record["params"]
    assert root["output_shape"] == [1, 100]
    replaced = [m for m in record["modules"] if m["type"] == "ReplacementBlock"]
    assert len(replaced) == (0 if rnn == "none" else 1)
    assert record["peak_activation_bytes"] >= 3 * 32 * 32 * 4  # the input is included
    assert record["latency"]["median_ms"] > 0 and record["latency"]["threads"] == 1
    assert json.loads((tmp_path / "profile.json").read_text())["macs"] == record["macs"]
    assert record["status"] == "completed"
    assert not missing.exists()  # no data touched


def test_profile_labels_what_was_built(tmp_path):
    """The group choice says sws_birnn, the node builds an SRNN: profile.json says srnn."""
    cfg, _ = _profile_cfg(tmp_path, "rnn=sws_birnn", "rnn._target_=crnn.layers.SRNN")
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.profile = {"batch_size": 1, "memory": False, "latency": {"enabled": False}}
    record = profile(cfg)
    assert (record["rnn"], record["cell"], record["name"]) == ("srnn", "rnn_tanh", "resnet20-srnn-linear")
    assert json.loads((tmp_path / "profile.json").read_text())["rnn"] == "srnn"


def test_profile_json_records_failure(tmp_path):
    cfg, _ = _profile_cfg(tmp_path, "rnn=srnn", "rnn.cell=transformer")
    from crnn.builders import ConfigError

    with pytest.raises(ConfigError):
        profile(cfg)
    record = json.loads((tmp_path / "profile.json").read_text())
    assert record["status"] == "failed" and "cell" in record["error"]


def test_arena_of_a_chain_is_exact():
    # input 3x10x10 (1200 B), conv -> 8x10x10 (3200 B), relu (not in place) -> 3200 B,
    # conv -> 4x10x10 (1600 B)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    mem = activation_memory(model, torch.zeros(1, 3, 10, 10))
    # peak right after the ReLU: input (held by the caller) + conv output (ReLU's input) + ReLU output
    assert mem["peak_bytes"] == 1200 + 3200 + 3200
    assert mem["input_bytes"] == 1200 and mem["output_bytes"] == 1600
    assert mem["param_bytes"] == 4 * (8 * 3 * 9 + 8 + 4 * 8 * 9 + 4)
    assert mem["total_bytes"] == 1200 + 3200 + 3200 + 1600


def test_arena_in_place_and_views_are_not_counted_twice():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(800, 10))
    mem = activation_memory(model, torch.zeros(1, 3, 10, 10))
    # in-place ReLU and Flatten (a view) reuse the conv output's storage; the linear's transposed
    # weight is a view of a parameter (excluded)
    assert mem["peak_bytes"] == 1200 + 3200 + 40
    assert mem["total_bytes"] == 1200 + 3200 + 40


def test_arena_counts_tensors_created_in_forward():
    class WithState(nn.Module):
        def forward(self, x):
            h = torch.zeros(1, 1000)  # e.g. an initial hidden state: an activation, 4000 B
            return x.sum() + h.sum()

    mem = activation_memory(WithState(), torch.ones(1, 10))
    assert mem["peak_bytes"] >= 40 + 4000


def test_arena_scales_with_batch():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    one = activation_memory(model, torch.zeros(1, 3, 10, 10))["peak_bytes"]
    four = activation_memory(model, torch.zeros(4, 3, 10, 10))["peak_bytes"]
    assert four == 4 * one


def test_latency_and_module_table_restore_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    threads = torch.get_num_threads()
    lat = cpu_latency(model, torch.zeros(1, 3, 8, 8), repeats=3, warmup=1, threads=1)
    assert lat["repeats"] == 3 and lat["min_ms"] <= lat["median_ms"]
    assert torch.get_num_threads() == threads and model.training
    rows = module_table(model, torch.zeros(1, 3, 8, 8))
    assert [r["name"] for r in rows] == ["", "0", "1"]
    assert rows[1]["macs"] == 4 * 3 * 9 * 6 * 6 and rows[1]["output_shape"] == [1, 4, 6, 6]
    assert rows[0]["macs"] == rows[1]["macs"] and rows[2]["macs"] == 0 and model.training


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_profile_multirun_in_process(tmp_path, monkeypatch):
    """``crnn-profile -m`` (the Hydra app, run in this process to save the interpreter start)."""
    from hydra.core.global_hydra import GlobalHydra

    import crnn.profile

    sweep = tmp_path / "sweep"
    argv = [
        "crnn-profile",
        "-m",
        "rnn=none,sws_birnn",
        f"data.root={tmp_path / 'no_data'}",
        *FAST,
        f"hydra.sweep.dir={sweep}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    try:
        crnn.profile.main()
    finally:
        GlobalHydra.instance().clear()
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/profile.json"))]
    assert [r["rnn"] for r in records] == ["none", "sws_birnn"]
    assert all(r["status"] == "completed" and r["overrides"][0].startswith("rnn=") for r in records)
    table = (sweep / "profile_table.md").read_text()
    assert all(f"{r['macs']:,}" in table for r in records)
    assert not (tmp_path / "no_data").exists()
    lines = [ln.split("|")[1:-1] for ln in table.splitlines()[2:]]
    assert [[c.strip() for c in ln][1:4] for ln in lines] == [
        ["resnet20", "none", "linear"],
        ["resnet20", "sws_birnn", "linear"],
    ]


def test_sweep_table_lists_a_failed_job(tmp_path):
    """The table of a profile sweep (read by crnn.results) shows a failed job with its error."""
    sweep = tmp_path / "sweep"
    for num, rnn in enumerate(["none", "srnn"]):
        overrides = [f"rnn={rnn}"] + (["rnn.cell=transformer"] if rnn == "srnn" else [])
        cfg, _ = _profile_cfg(sweep / f"{num}_job", *overrides)
        from omegaconf import open_dict

        from crnn.errors import ConfigError

        with open_dict(cfg):
            cfg.profile = {"batch_size": 1, "memory": False, "latency": {"enabled": False}}
        if rnn == "srnn":
            with pytest.raises(ConfigError):
                profile(cfg)
        else:
            profile(cfg)
    table = write_sweep_table(sweep)
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines()[2:]]
    assert [r[2] for r in rows] == ["none", "srnn"]
    assert (
        rows[0][-1] == "completed" and rows[1][-1].startswith("failed: ConfigError") and "cell" in rows[1][-1]
    )
    assert (sweep / "profile_table.csv").read_text().count("\n") == 3


# ------------------------------------------------------------------------------- embedded

EMBEDDED = {"batch_size": 1, "memory": False, "latency": {"enabled": False}, "embedded": True}


def _fake_measure_embedded(calls: list):
    """A stand-in for ``crnn.export.measure_embedded`` (the real one: the slow test in
    test_export_embedded.py): numbers derived from the model, so each row must get its own."""

    def measure(module, calibration, images, labels):
        assert calibration.dtype == images.dtype == torch.float32  # normalised, as the model sees them
        calls.append((tuple(calibration.shape), tuple(images.shape), tuple(labels.shape)))
        params = complexity.count_params(module)
        return {
            "arena_kib": params / 1000,
            "flash_kib": params / 500,
            "float_acc": 0.5,
            "int8_acc": 0.25,
            "int8_acc_drop": 0.25,
            "int8_agreement": 0.75,
            "n_calibration": len(calibration),
            "n_eval": len(images),
            "ops": {"FULLY_CONNECTED": 1},
        }

    return measure


def test_profile_embedded_keys_and_table(cifar_root, tmp_path, monkeypatch):
    """``profile.embedded=true``: profile.json gets the int8 TFLM numbers (measured on the run's own
    images) and crnn-tables prints the embedded table from them."""
    from omegaconf import open_dict

    import crnn.export
    import crnn.export.embedded
    from crnn.results import make_tables

    calls: list = []
    monkeypatch.setattr(crnn.export.embedded, "missing_extra", lambda: [])
    monkeypatch.setattr(crnn.export, "measure_embedded", _fake_measure_embedded(calls))
    sweep = tmp_path / "sweep"
    records = []
    for num, rnn in enumerate(["none", "srnn"]):
        cfg = compose(cifar_overrides(cifar_root, f"rnn={rnn}"), sweep / f"{num}_job")
        with open_dict(cfg):
            cfg.profile = {**EMBEDDED, "calibration_images": 8, "eval_images": 12}
        profile(cfg)
        records.append(json.loads((sweep / f"{num}_job" / "profile.json").read_text()))
    assert calls == [((8, 3, 32, 32), (12, 3, 32, 32), (12,))] * 2
    for r in records:
        assert r["status"] == "completed"
        assert r["arena_kib"] == r["params"] / 1000 and r["flash_kib"] == r["params"] / 500
        assert (r["float_acc"], r["int8_acc"], r["int8_acc_drop"], r["int8_agreement"]) == (
            0.5,
            0.25,
            0.25,
            0.75,
        )
        assert r["embedded"] == {"n_calibration": 8, "n_eval": 12, "ops": {"FULLY_CONNECTED": 1}}

    result = make_tables([sweep], tmp_path / "tables", plots=False)
    section = result.markdown.split("## Embedded (int8 TFLite, TensorFlow Lite Micro)", 1)[1]
    lines = [[c.strip() for c in ln.split("|")[1:-1]] for ln in section.strip().splitlines()[2:4]]
    assert [ln[:2] for ln in lines] == [["resnet20", "none"], ["", "srnn"]]
    for line, r in zip(lines, records, strict=True):
        assert line[4:] == [f"{r['flash_kib']:.1f}", f"{r['arena_kib']:.1f}", "50.0", "25.0", "75.0"]
    assert "8 calibration training images" in section and "on 12 test images" in section
    csv = (tmp_path / "tables" / "embedded.csv").read_text().splitlines()
    assert len(csv) == 3 and "arena_kib" in csv[0]
    table = write_sweep_table(sweep)  # crnn-profile's own per-job table shows them too
    assert "arena_kib" in table and f"{records[1]['arena_kib']:.3f}".rstrip("0") in table


def test_profile_embedded_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    from omegaconf import open_dict

    import crnn.export.embedded
    from crnn.errors import ConfigError

    monkeypatch.setattr(crnn.export.embedded, "missing_extra", lambda: ["litert_torch", "tflite_micro"])
    cfg, _ = _profile_cfg(tmp_path, "rnn=srnn")
    with open_dict(cfg):
        cfg.profile = {**EMBEDDED, "calibration_images": 8, "eval_images": 12}
    with pytest.raises(ConfigError, match=r"make install-embedded.*pip install -e \"\.\[embedded\]\""):
        profile(cfg)
    record = json.loads((tmp_path / "profile.json").read_text())
    assert record["status"] == "failed" and "litert_torch, tflite_micro not installed" in record["error"]


def test_module_table_text():
    rows = [
        {"depth": 0, "name": "", "type": "Sequential", "params": 1234, "macs": 56789, "output_shape": [1, 4]},
        {"depth": 1, "name": "0", "type": "Conv2d", "params": 1234, "macs": 56789, "output_shape": [1, 4]},
        {"depth": 4, "name": "0.a.b.c", "type": "ReLU", "params": 0, "macs": 0, "output_shape": None},
    ]
    lines = module_rows_text(rows, max_depth=3).splitlines()
    assert lines[0].split() == ["module", "type", "params", "MACs", "output", "shape"]
    assert lines[2].split() == ["(model)", "Sequential", "1,234", "56,789", "[1,", "4]"]
    assert len(lines) == 4  # the depth-4 row is cut


def test_profile_imports_no_other_entry_point():
    code = "import sys, crnn.profile; print(sorted(m for m in sys.modules if m.startswith('crnn.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for entry in ("crnn.train", "crnn.eval", "crnn.export", "crnn.results.cli"):
        assert f"'{entry}'" not in out, out


@pytest.mark.slow
def test_profile_multirun_cli(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(
        "crnn.profile",
        "-m",
        "rnn=none,srnn,sws_birnn",
        f"data.root={tmp_path / 'no_data'}",
        *FAST,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(sweep.glob("*/profile.json"))
    assert [p.parent.name for p in jobs] == [
        "0_resnet20-none-linear",
        "1_resnet20-srnn-linear",
        "2_resnet20-sws_birnn-linear",
    ]
    records = [json.loads(p.read_text()) for p in jobs]
    assert all(r["status"] == "completed" for r in records)
    table = (sweep / "profile_table.md").read_text()
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines()[2:]]
    assert [(c[2], c[7]) for c in cells] == [(r["rnn"], f"{r['macs']:,}") for r in records]
    out = proc.stdout + proc.stderr
    assert out.count("peak activations") == 3  # one summary row per job
    assert not (tmp_path / "no_data").exists()


# ------------------------------------------------------------------------------- presets

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if "sweeper:" in p.read_text())
"""The sweep presets (single-run presets such as coco_detection have no sweep)."""


def planned(preset: str, tmp_path: Path, cfg=None) -> list[list[str]]:
    """The job override lists `crnn-train -m experiment=<preset>` launches (basic sweeper)."""
    cfg = cfg if cfg is not None else compose([f"experiment={preset}"], tmp_path)
    return [job + [f"experiment={preset}"] for job in expand_sweep(cfg.hydra.sweeper.params)]


def test_six_presets_with_their_own_sweeps(tmp_path):
    assert len(PRESETS) >= 6
    sizes = {}
    for preset in PRESETS:
        cfg = compose([f"experiment={preset}"], tmp_path)
        assert cfg.hydra.sweeper.params, preset  # each preset carries its sweep
        assert cfg.trainer.max_epochs >= 1 and cfg.task.optimizer._target_ and cfg.task.scheduler._target_
        sizes[preset] = len(planned(preset, tmp_path, cfg))
    assert sizes["cifar100_last_block"] == 3 * 7 * 3
    assert sizes["cifar100_rnn_vs_conv_rf"] == 8 * 3


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("cifar100")])
def test_cifar_preset_jobs_build(preset, tmp_path):
    """Every distinct configuration of the preset (seed 0) builds; the slow variant checks all."""
    jobs = [
        j for j in planned(preset, tmp_path) if "seed=0" in j or not any(o.startswith("seed=") for o in j)
    ]
    for job in {0: jobs[0], 1: jobs[-1]}.values():  # first and last here; all in the slow test
        cfg = compose([f"data.root={tmp_path / 'none'}", *job], tmp_path)
        _, module, inputs = build_model(cfg)
        assert complexity.count_params(module) > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_job_builds(preset, tmp_path):
    for job in planned(preset, tmp_path):
        if not any(o == "seed=0" for o in job) and any(o.startswith("seed=") for o in job):
            continue
        cfg = compose([f"data.root={tmp_path / 'none'}", *job], tmp_path)
        _, module, inputs = build_model(cfg)
        assert complexity.count_macs(module, *inputs) > 0


def test_preset_variants_set_the_group_choice(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose(["experiment=cifar100_rnn_vs_conv_rf", "+experiment/rf_layer=dsconv15"], tmp_path)
    assert HydraConfig.get().runtime.choices["rnn"] == "dsconv" and cfg.rnn.kernel_size == 15
    cfg = compose(["experiment=cifar100_sequence_heads", "+experiment/seq_head=cols_mean"], tmp_path)
    assert HydraConfig.get().runtime.choices["head"] == "sequence"
    assert (cfg.head.scan, cfg.head.readout, cfg.rnn._target_) == ("cols", "mean", None)
