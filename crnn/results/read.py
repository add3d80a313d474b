"""Reading runs: job folders of Hydra sweeps (``metrics.json`` / ``profile.json`` and ``.hydra/``)
into :class:`Job` records, each run counted once however the folders were given.

A sweep folder holds one folder per job (Hydra's ``<sweep>/<num>_<name>``) and ``multirun.yaml``,
from which the jobs planned but not started yet (``pending``: queued, or never launched) are
known. The saved configs are read as plain YAML; nothing here imports Hydra.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crnn.naming import model_name

__all__ = [
    "BASE",
    "EMBEDDED_KEYS",
    "Job",
    "TablesError",
    "dedupe",
    "expand_sweep",
    "metric_value",
    "planned_jobs",
    "read_job",
    "read_sweep",
]

BASE = ("data", "backbone", "rnn", "head")
"""The group choices that name a model in the tables."""
EMBEDDED_KEYS = ("arena_kib", "flash_kib", "float_acc", "int8_acc", "int8_acc_drop", "int8_agreement")
"""What ``crnn-profile profile.embedded=true`` adds to ``profile.json`` (int8 TFLite in TensorFlow
Lite Micro: arena and flash in KiB, accuracies and top-1 agreement as fractions); the rest of the
measurement (``n_calibration``, ``n_eval``, ...) is under its ``embedded`` key."""

# Config keys that describe how a node is built, not what it is.
_NODE_SKIP = ("_target_", "_partial_", "_recursive_", "_convert_")
# Folders below a sweep that are never job folders.
_NOT_JOBS = {"tables", "wandb", "checkpoints", "eval", "csv", ".hydra", ".submitit"}


class TablesError(RuntimeError):
    """A problem with the sources (nothing found, W&B unavailable): one message for the user."""


@dataclass
class Job:
    """One training (or profiling) job of a sweep."""

    source: str  # folder, or W&B run path
    # completed | failed | running | interrupted | no-metrics | pending | profiled | unknown
    status: str
    run_id: str  # identity: the same run read twice has the same id
    choices: dict[str, Any] = field(default_factory=dict)
    seed: Any = None
    model: dict[str, Any] = field(default_factory=dict)  # choices + flattened backbone/rnn/head nodes
    recipe: dict[str, Any] = field(default_factory=dict)  # flattened training recipe
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    error: str | None = None  # one line: "ErrorType: message"
    traceback: str | None = None  # where the traceback is (a file), when the run says so
    kind: str = "train"  # train | profile
    updated: float | None = None  # when its folder was last written to (seconds since the epoch)

    def label(self, common: frozenset[str] = frozenset()) -> str:
        """``backbone-rnn-head [other overrides]``, without the seed and the ``common`` overrides."""
        skip = (*BASE, "seed")
        extra = [o for o in self.overrides if _key_of(o) not in skip and o not in common]
        return model_name(self.choices) + (f" [{' '.join(extra)}]" if extra else "")


def metric_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """The best checkpoint's value of ``name`` in a ``metrics.json``, ``None`` if absent or not finite.

    ``metrics.json`` may keep the best and the last epoch apart in several spellings; the best is
    read first: a ``best`` section (``{"best": {"val/acc1": ...}}``), a ``<name>_best`` or
    ``best/<name>`` key, then the plain key (test metrics are measured on the best checkpoint).
    """
    section = metrics.get("best")
    candidates = [
        section.get(name) if isinstance(section, Mapping) else None,
        metrics.get(f"{name}_best"),
        metrics.get(f"best/{name}"),
        metrics.get(name),
    ]
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k) not in _NODE_SKIP:
                out.update(_flatten(v, f"{prefix}.{k}"))
    elif isinstance(node, (list, tuple)):
        out[prefix] = json.dumps(list(node))
    else:
        out[prefix] = node
    return out


def model_key(choices: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The group choices and every value of the ``backbone``/``rnn``/``head`` nodes."""
    model = {k: choices.get(k) for k in BASE}
    for node in ("backbone", "rnn", "head"):
        if isinstance(config.get(node), Mapping):
            model.update(_flatten(config[node], node))
    return model


def recipe_key(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training recipe: optimiser, schedule, loss settings, epochs, batch size."""
    recipe: dict[str, Any] = {}
    task = config.get("task")
    if isinstance(task, Mapping):
        for key in ("optimizer", "scheduler", "label_smoothing"):
            if key in task:
                recipe.update(_flatten(task[key], f"task.{key}"))
    for section, keys in (
        ("trainer", ("max_epochs", "max_steps", "limit_train_batches")),
        ("data", ("batch_size",)),
    ):
        node = config.get(section)
        if isinstance(node, Mapping):
            recipe.update({f"{section}.{k}": node.get(k) for k in keys if k in node})
    return recipe


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # a missing or broken file just means "unknown"
        return None


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_error(folder: Path) -> str | None:
    """The last ERROR line of the job's log files (Hydra writes ``<job>.log`` in the job folder)."""
    lines: list[str] = []
    for log in sorted(folder.glob("*.log")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        lines += [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "Error:" in ln]
    if not lines:
        return None
    return re.sub(r"^\[[^\]]*\]\[[^\]]*\]\[ERROR\] - ", "", lines[-1])[:300]


def _error_of(record: Mapping[str, Any]) -> str | None:
    """``"ErrorType: message"`` from ``error_type`` / ``error`` (either may be missing), else the
    ``reason`` alone (an interrupted run: ``SIGTERM``); the keys of :func:`crnn.lifecycle.outcome_of`."""
    error, kind, reason = record.get("error"), record.get("error_type"), record.get("reason")
    if not error and not kind:
        return str(reason) if reason else None
    error = " ".join(str(error or "").split())[:300]  # one line
    if kind and not error.startswith(str(kind)):
        return f"{kind}: {error}" if error else str(kind)
    return error


def _is_job_folder(path: Path) -> bool:
    return any((path / name).exists() for name in (".hydra", "metrics.json", "profile.json"))


def job_folders(sweep: Path) -> list[Path]:
    """The job folders of a sweep (or the folder itself when it is one run), in job order."""
    if _is_job_folder(sweep) and not (sweep / "multirun.yaml").is_file():
        return [sweep]
    found, stack = [], [(sweep, 0)]
    while stack:
        folder, depth = stack.pop()
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _NOT_JOBS):
            if _is_job_folder(child):
                found.append(child)
            elif depth < 2:
                stack.append((child, depth + 1))
    return sorted(found, key=_job_order)


def _job_order(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, str(path))


def _run_id(folder: Path, record: Mapping[str, Any]) -> str:
    """A run's identity: the id it recorded (``run_id``, else its W&B id), else its real folder."""
    for key in ("run_id", "wandb_id"):
        if record.get(key):
            return str(record[key])
    return str(folder.resolve())


def read_job(folder: Path) -> Job:
    """A job from its folder: ``metrics.json``, ``profile.json``, ``.hydra/{config,overrides,hydra}.yaml``."""
    metrics = _load_json(folder / "metrics.json")
    profile = _load_json(folder / "profile.json")
    config = _load_yaml(folder / ".hydra" / "config.yaml") or {}
    overrides = _load_yaml(folder / ".hydra" / "overrides.yaml") or []
    hydra_cfg = _load_yaml(folder / ".hydra" / "hydra.yaml") or {}
    runtime_choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    record = metrics or profile or {}
    choices = {k: record.get(k, runtime_choices.get(k)) for k in (*BASE, "task", "experiment")}
    if not config and profile and isinstance(profile.get("model"), Mapping):
        config = dict(profile["model"])
    rnn_node = config.get("rnn") if isinstance(config.get("rnn"), Mapping) else {}
    choices["cell"] = record.get("cell", rnn_node.get("cell"))
    if metrics is not None:
        status, kind = str(metrics.get("status") or "unknown"), "train"
    elif profile is not None:
        status, kind = ("profiled" if profile.get("status") == "completed" else "failed"), "profile"
    else:
        status, kind = "no-metrics", ("profile" if (folder / "profile.log").exists() else "train")
    error = _error_of(record)
    if status in ("failed", "no-metrics", "unknown", "interrupted") and not error:
        error = _last_error(folder)
    trace = record.get("traceback")
    return Job(
        source=str(folder),
        status=status,
        run_id=_run_id(folder, record),
        choices=choices,
        seed=record.get("seed", config.get("seed")),
        model=model_key(choices, config),
        recipe=recipe_key(config),
        metrics=metrics or {},
        profile=profile if profile and profile.get("status") == "completed" else None,
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        error=error,
        # a path (short) is shown; a whole traceback text stays in the file
        traceback=str(trace) if isinstance(trace, str) and "\n" not in trace.strip() else None,
        kind=kind,
        updated=_last_write(folder),
    )


def _last_write(folder: Path) -> float | None:
    """The newest modification time of the job's records and logs (a running job writes them)."""
    times = [p.stat().st_mtime for p in (folder / "metrics.json", folder / "profile.json") if p.exists()]
    times += [p.stat().st_mtime for p in folder.glob("*.log")]
    return max(times, default=None)


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def planned_jobs(sweep: Path) -> list[list[str]] | None:
    """The override lists of every job the sweep planned, in launch order, from ``multirun.yaml``;
    ``None`` when that cannot be known (another sweeper than the basic one, an unreadable file)."""
    cfg = _load_yaml(sweep / "multirun.yaml")
    hydra_cfg = (cfg or {}).get("hydra") if isinstance(cfg, Mapping) else None
    if not isinstance(hydra_cfg, Mapping):
        return None
    sweeper = hydra_cfg.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    task = (hydra_cfg.get("overrides") or {}).get("task") or []
    try:
        return expand_sweep(sweeper.get("params") or {}, task)
    except Exception:  # noqa: BLE001 - an unreadable plan only loses the "pending" rows
        return None


def expand_sweep(params: Mapping[str, Any], overrides: Sequence[str] = ()) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for sweeper ``params`` and command-line
    ``overrides``: the cartesian product of every ``key=a,b,c`` (a key given twice keeps its
    first place and its last value), through Hydra's public override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(args):
        key = override.get_key_element()
        if override.is_discrete_sweep():
            choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        elif override.is_sweep_override():
            raise ValueError(f"{key}: the basic sweeper takes only lists of values")
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def _identity(overrides: Sequence[str]) -> frozenset[str]:
    """A job's overrides without its seed: the same for every seed of a configuration."""
    return frozenset(o for o in overrides if _key_of(o) != "seed")


def _first(values: Iterable[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def _pending_job(sweep: Path, overrides: list[str], sibling: Job | None, others: Sequence[Job]) -> Job:
    """A planned job without a folder. Its configuration is that of a started job differing only
    in the seed; failing that, the group choices its overrides name (the other groups as in the
    sweep's started jobs)."""
    values = {_key_of(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    seed: Any = values.get("seed")
    seed = int(seed) if seed is not None and seed.lstrip("-").isdigit() else seed
    run_id = f"{sweep.resolve()} {' '.join(sorted(overrides))}"
    source = f"{sweep} (not started)"
    if sibling is not None:
        return Job(
            source,
            "pending",
            run_id,
            dict(sibling.choices),
            seed,
            dict(sibling.model),
            dict(sibling.recipe),
            overrides=overrides,
            kind=sibling.kind,
        )
    choices: dict[str, Any] = {k: values.get(k) for k in BASE}
    for k in BASE:
        if choices[k] is None:
            choices[k] = _first(
                j.choices.get(k) for j in others if not any(_key_of(o) == k for o in j.overrides)
            )
    return Job(source, "pending", run_id, choices, seed, dict(choices), overrides=overrides)


def read_sweep(sweep: str | Path) -> list[Job]:
    """Every job of a multirun folder (or one run folder), planned-but-not-started ones as ``pending``."""
    sweep = Path(sweep).expanduser()
    if not sweep.is_dir():
        raise TablesError(
            f"{sweep}: no such folder (give a Hydra multirun folder, e.g. outputs/multirun/<date>/<time>)"
        )
    jobs = [read_job(folder) for folder in job_folders(sweep)]
    plan = planned_jobs(sweep)
    if plan:
        seen = {frozenset(j.overrides) for j in jobs}
        siblings = {_identity(j.overrides): j for j in jobs if j.overrides}
        for overrides in plan:
            if frozenset(overrides) not in seen:
                jobs.append(_pending_job(sweep, overrides, siblings.get(_identity(overrides)), jobs))
    if not jobs:
        raise TablesError(f"{sweep}: no job folders (no metrics.json, profile.json or .hydra/ below it)")
    return jobs


def dedupe(jobs: Iterable[Job]) -> list[Job]:
    """Each run once (by :attr:`Job.run_id`), in first-seen order: the same sweep given twice, a
    sweep and one of its job folders, a symlinked copy, a folder and its W&B run."""
    out: dict[str, Job] = {}
    for job in jobs:
        out.setdefault(job.run_id, job)
    return list(out.values())
