"""``crnn-profile``: complexity of the composed model, untrained (Hydra app; data only for embedded).

    crnn-profile backbone=resnet20 rnn=sws_birnn
    crnn-profile -m rnn=none,srnn,sws_birnn
    crnn-profile -m experiment=cifar100_last_block seed=0
    crnn-profile -m rnn=none,srnn,sws_birnn profile.embedded=true data.root=<cifar> && crnn-tables <sweep>

Same config groups as ``crnn-train`` (``conf/profile.yaml`` = ``train`` + profile settings). The
model is built exactly as training builds it (``instantiate(cfg.data)``, whose constructor touches
no files, then :func:`crnn.builders.build_task`, then ``task.complexity_inputs()``) and measured:

* ``params`` and ``macs``: :func:`crnn.complexity.count_params` and
  :func:`crnn.complexity.mac_analysis` (the analysis behind ``count_macs``, same number);
* ``activation_memory``: peak bytes of activations alive at once in one forward pass at
  ``profile.batch_size`` (the embedded tensor arena: input included, parameters excluded; see
  :func:`crnn.complexity.activation_memory` for exactly how);
* ``latency``: median CPU wall time of one forward pass on ``profile.latency.threads`` thread(s);
* ``modules``: per-module params, MACs (fvcore ``by_module``) and output shape;
* with ``profile.embedded=true`` (needs the ``embedded`` extra and the run's data at ``data.root``):
  the int8 TFLite model run in TensorFlow Lite Micro (:func:`crnn.export.measure_embedded`, the
  model's seeded initialisation, calibrated on ``profile.calibration_images`` training images):
  ``arena_kib``, ``flash_kib``, ``float_acc``, ``int8_acc``, ``int8_acc_drop``, ``int8_agreement``
  on the first ``profile.eval_images`` test images (the rest of the measurement under ``embedded``).

Each job prints one summary row (plus the module table in a single run) and writes
``profile.json`` in its run folder; after a multirun :class:`SweepTable` prints the table of all
jobs and writes ``profile_table.md`` / ``profile_table.csv`` in the sweep folder (read and rendered
by :mod:`crnn.results`, which ``crnn-tables`` uses too).
"""

from __future__ import annotations

import logging
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crnn import complexity
from crnn.builders import build_model, run_labels
from crnn.complexity import activation_memory, cpu_latency, module_table
from crnn.errors import USER_ERRORS, ConfigError
from crnn.naming import choices, model_name
from crnn.records import write_json_atomic
from crnn.run_config import print_config
from crnn.runtime import git_commit, keep_freed_memory

log = logging.getLogger("crnn.profile")

GROUPS = ("data", "task", "backbone", "rnn", "head", "experiment", "seed")


def _extra_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change the model beyond the group choices (no seed, profile.*, hydra.*)."""
    keep = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key not in GROUPS and not key.startswith(("profile.", "hydra.", "paths.", "data.root")):
            keep.append(o)
    return keep


# ----------------------------------------------------------------------------------------------
# building and measuring
# ----------------------------------------------------------------------------------------------


def _batched(inputs: tuple[torch.Tensor, ...], batch_size: int) -> tuple[torch.Tensor, ...]:
    if batch_size == 1:
        return inputs
    return tuple(x.expand(batch_size, *x.shape[1:]).contiguous() if x.shape[0] == 1 else x for x in inputs)


def profile_model(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    batch_size: int = 1,
    memory: bool = True,
    latency: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Params, MACs, per-module table, peak activation memory and CPU latency of ``module(*inputs)``.

    ``inputs`` are the batch-1 complexity inputs (params and MACs are per image); memory and
    latency use a batch of ``batch_size`` copies. ``latency``: ``cpu_latency`` keyword arguments
    (``repeats``, ``warmup``, ``threads``), ``None`` to skip it.
    """
    analysis = complexity.mac_analysis(module, *inputs)
    result: dict[str, Any] = {
        "params": complexity.count_params(module),
        "macs": int(analysis.total()),
        "input_shape": list(inputs[0].shape[1:]),
        "batch_size": batch_size,
    }
    result["modules"] = module_table(module, *inputs, analysis=analysis)
    batch = _batched(inputs, batch_size)
    if memory:
        mem = activation_memory(module, *batch)
        result["activation_memory"] = mem
        result["peak_activation_bytes"] = mem["peak_bytes"]
    if latency is not None:
        lat = cpu_latency(module, *batch, **latency)
        result["latency"] = lat
        result["latency_ms"] = lat["median_ms"]
    return result


def _require_embedded_extra() -> None:
    from crnn.export.embedded import INSTALL_HINT, missing_extra

    missing = missing_extra()
    if missing:
        raise ConfigError(
            f"profile.embedded=true needs the embedded extra ({', '.join(missing)} not installed): "
            f"{INSTALL_HINT}"
        )


def measure_embedded_model(
    cfg: DictConfig, module: torch.nn.Module, settings: dict[str, Any]
) -> dict[str, Any]:
    """``profile.embedded=true``: :func:`crnn.export.measure_embedded` of ``module`` on the run's own
    images (``profile.calibration_images`` training images, the first ``profile.eval_images`` test
    images): the :data:`crnn.results.read.EMBEDDED_KEYS` numbers (what ``crnn-tables`` shows), the
    rest of its result under ``embedded``."""
    from crnn.export import measure_embedded, normalized_images
    from crnn.results.read import EMBEDDED_KEYS

    calibration, images, labels = normalized_images(
        cfg, int(settings["calibration_images"]), int(settings["eval_images"]), int(cfg.get("seed") or 0)
    )
    measured = measure_embedded(module, calibration, images, labels)
    return {
        **{k: measured[k] for k in EMBEDDED_KEYS},
        "embedded": {k: v for k, v in measured.items() if k not in EMBEDDED_KEYS},
    }


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def profile(cfg: DictConfig) -> dict[str, Any]:
    """Profile the model of ``cfg`` (one job); writes and returns ``profile.json``'s content.

    Raises what building the model raises (:data:`crnn.errors.USER_ERRORS` for bad configs) after
    writing ``profile.json`` with ``status: failed`` and the error.
    """
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("print_config"):
        print_config(cfg, output_dir / "config.yaml")
    node = cfg.get("profile")
    settings = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    picked = choices(cfg)
    record: dict[str, Any] = {
        "status": "running",
        "name": model_name(picked),
        **picked,
        "seed": cfg.get("seed"),
        "overrides": _task_overrides(),
        "model": {
            k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "rnn", "head") if k in cfg
        },
        "profile_settings": settings,
        "torch_version": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "git_commit": git_commit(),
        "run_dir": str(output_dir),
    }
    path = output_dir / "profile.json"
    start = time.time()
    try:
        if settings.get("embedded"):
            _require_embedded_extra()  # before the (slower) measurements
        task, module, inputs = build_model(cfg)
        built = run_labels(task)  # the labels of what was built (the group choices may say otherwise)
        record.update(built, name=model_name(built))
        lat = settings.get("latency") or {}
        measured = profile_model(
            module,
            inputs,
            batch_size=int(settings.get("batch_size", 1)),
            memory=bool(settings.get("memory", True)),
            latency={k: int(lat[k]) for k in ("repeats", "warmup", "threads") if k in lat}
            if lat.get("enabled", True)
            else None,
        )
        if settings.get("embedded"):
            measured.update(measure_embedded_model(cfg, module, settings))
    except BaseException as err:
        record.update(
            status="failed", error=f"{type(err).__name__}: {err}", wall_time_s=round(time.time() - start, 3)
        )
        if not isinstance(err, USER_ERRORS):
            record["traceback"] = traceback.format_exc()
        write_json_atomic(path, record)
        raise
    record.update(measured, status="completed", wall_time_s=round(time.time() - start, 3))
    write_json_atomic(path, record)
    return record


# ----------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def module_rows_text(rows: list[dict[str, Any]], max_depth: int | None = 3) -> str:
    """The per-module table as aligned text (rows down to ``max_depth``, named by their full path)."""
    keep = [r for r in rows if max_depth is None or r["depth"] <= max_depth]
    table = pd.DataFrame(
        {
            "module": [r["name"] or "(model)" for r in keep],
            "type": [r["type"] for r in keep],
            "params": [f"{r['params']:,}" for r in keep],
            "MACs": [f"{r['macs']:,}" for r in keep],
            "output shape": ["-" if r["output_shape"] is None else str(r["output_shape"]) for r in keep],
        }
    )
    return table.to_markdown(
        index=False, tablefmt="simple", colalign=("left", "left", "right", "right", "left")
    )


def summary_line(record: dict[str, Any]) -> str:
    """One line per job: name, params, MACs, peak activation memory, latency."""
    extra = _extra_overrides(record.get("overrides", []))
    label = record.get("name", "?") + (f" [{' '.join(extra)}]" if extra else "")
    if record.get("status") != "completed":
        return f"{label}: FAILED: {record.get('error', record.get('status'))}"
    lat = record.get("latency") or {}
    latency = (
        f"{lat['median_ms']:.2f} ms (median of {lat['repeats']}, {lat['threads']} thread)" if lat else "-"
    )
    line = (
        f"{label}: params {record['params']:,} | MACs {record['macs']:,} | "
        f"peak activations {_kib(record.get('peak_activation_bytes'))} | latency {latency}"
    )
    if "arena_kib" in record:
        line += (
            f" | int8 TFLM: arena {record['arena_kib']:.1f} KiB, flash {record['flash_kib']:.1f} KiB, "
            f"acc float {record['float_acc']:.1%} / int8 {record['int8_acc']:.1%}"
        )
    return line


class SweepTable(Callback):
    """Hydra callback (``conf/profile.yaml``): after a multirun, print and save the table of all
    jobs (``profile_table.md`` / ``.csv`` in the sweep folder), read back by :mod:`crnn.results`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            text = write_sweep_table(sweep_dir)
            print(f"\nComplexity of {sweep_dir} (profile_table.md / .csv):\n{text}", flush=True)


def write_sweep_table(sweep_dir: Path) -> str:
    """Write ``profile_table.md`` and ``profile_table.csv`` in ``sweep_dir``; returns the Markdown."""
    from crnn.results import dedupe, read_sweep
    from crnn.results.render import profile_markdown, profile_table

    jobs = [j for j in dedupe(read_sweep(sweep_dir)) if j.kind == "profile"]
    text = profile_markdown(jobs)
    (sweep_dir / "profile_table.md").write_text(text + "\n")
    profile_table(jobs).to_csv(sweep_dir / "profile_table.csv", index=False)
    return text


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


# ``../conf`` next to this package, as an absolute path: a relative ``config_path`` is resolved
# against the *module* name when the app is started by a console script (``crnn-profile``) or
# imported, which points Hydra at a non-existent ``conf`` package.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="profile")
def _main(cfg: DictConfig) -> int | None:
    keep_freed_memory()  # here: a sweep's worker process (submitit, joblib) runs _main, not main
    multirun = _is_multirun()
    try:
        record = profile(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        if multirun:  # keep profiling the other jobs; the failure is in profile.json and the table
            return None
        raise SystemExit(2) from None
    except Exception:
        if multirun:
            log.exception("profiling failed")
            return None
        raise
    modules = OmegaConf.select(cfg, "profile.modules") or {}
    show = modules.get("print")
    if show if show is not None else not multirun:
        depth = modules.get("max_depth", 3)
        log.info("Per-module table (%s):\n%s", record["name"], module_rows_text(record["modules"], depth))
    log.info("%s", summary_line(record))
    if not multirun:
        log.info("profile.json: %s", Path(cfg.paths.output_dir) / "profile.json")
    return record["macs"]


def main() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
    _main()


if __name__ == "__main__":
    main()
