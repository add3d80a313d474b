"""``crnn-tables``: paper-style tables and plots from finished (or running) sweeps.

    crnn-tables outputs/multirun/2026-01-01/12-00-00 [more sweep folders] [--metric test/acc1] [--out DIR]
    crnn-tables --wandb ENTITY/PROJECT --group cifar100_last_block        # online only

Sources: Hydra multirun folders (every job folder's ``metrics.json`` from ``crnn-train`` and/or
``profile.json`` from ``crnn-profile``, its ``.hydra/`` config and overrides, and the sweep's
``multirun.yaml`` to know which jobs were planned), or the runs of a W&B group (``wandb.Api()``).

One row per configuration: jobs that differ only in ``seed`` are one row (the metric's mean, sample
std and the number of seeds). A configuration is the group choices (data, backbone, rnn, head),
every value of the ``backbone``/``rnn``/``head`` config nodes and the training recipe (task
optimiser / schedule / loss settings, epochs, batch size): columns are shown for the settings that
vary between rows. Rows are sorted and grouped as the paper's tables: by data and backbone, then
layer type with ``none`` (the conv baseline) first. Params and MACs come from ``metrics.json`` (or
``profile.json``); peak activation memory and latency from ``profile.json`` jobs of the same model,
when a profile sweep is passed too.

Nothing is dropped silently: every job that is not completed (``failed``, ``running``,
``interrupted``, a job folder without ``metrics.json`` = ``no-metrics``, a planned job without a
folder = ``pending``) is listed in the "Incomplete jobs" section and counted in the row's status,
so a running sweep gives a partial table.

Outputs (default ``<first sweep>/tables/``): ``table.md`` (table + incomplete jobs), ``table.csv``
(raw numbers), ``table.tex`` (booktabs), ``jobs.csv`` (one line per job) and the plots
``<metric>_vs_macs.png`` and ``<metric>_vs_params.png`` (one marker per layer type, the Pareto
front drawn).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Job", "TablesError", "build_rows", "main", "make_tables", "read_sweep", "read_wandb"]

BASE = ("data", "backbone", "rnn", "head")
LAYER_ORDER = (
    "none",
    "conv",
    "dsconv",
    "srnn",
    "sws_birnn",
    "sbirnn_sum",
    "sbirnn_cat",
    "sequencer",
    "ds_rnn",
    "rnn2d",
    "rnn2d_4way",
)
BACKBONE_ORDER = ("resnet20", "resnet32", "resnet44", "resnet56", "mobilenetv2")
HEAD_ORDER = ("linear", "sequence", "fcos")
MARKERS = {
    "none": "o",
    "conv": "s",
    "dsconv": "D",
    "srnn": "^",
    "sws_birnn": "*",
    "sbirnn_sum": "v",
    "sbirnn_cat": "<",
    "sequencer": ">",
    "ds_rnn": "P",
    "rnn2d": "X",
    "rnn2d_4way": "h",
}
DEFAULT_METRICS = ("test/acc1", "val/AP", "val/acc1")
# Keys of the saved config that describe the run environment, not the configuration.
_NODE_SKIP = ("_target_", "_partial_", "_recursive_", "_convert_")


class TablesError(RuntimeError):
    """A problem with the sources (nothing found, W&B unavailable): one message for the user."""


@dataclass
class Job:
    """One training (or profiling) job of a sweep."""

    source: str  # folder, or W&B run path
    status: str  # completed | failed | running | interrupted | no-metrics | pending | profiled | unknown
    choices: dict[str, Any] = field(default_factory=dict)
    seed: Any = None
    model: dict[str, Any] = field(default_factory=dict)  # choices + flattened backbone/rnn/head nodes
    recipe: dict[str, Any] = field(default_factory=dict)  # flattened training recipe
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    error: str | None = None
    kind: str = "train"  # train | profile

    def label(self, common: frozenset[str] = frozenset()) -> str:
        """``backbone-rnn-head [other overrides]``, without the seed and the ``common`` overrides."""
        skip = (*BASE, "seed")
        extra = [o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") not in skip and o not in common]
        base = "-".join(str(self.choices.get(k)) for k in ("backbone", "rnn", "head"))
        return base + (f" [{' '.join(extra)}]" if extra else "")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k) in _NODE_SKIP:
                continue
            out.update(_flatten(v, f"{prefix}.{k}"))
    elif isinstance(node, (list, tuple)):
        out[prefix] = json.dumps(list(node))
    else:
        out[prefix] = node
    return out


def _model_key(choices: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    model = {k: choices.get(k) for k in BASE}
    for node in ("backbone", "rnn", "head"):
        if isinstance(config.get(node), Mapping):
            model.update(_flatten(config[node], node))
    return model


def _recipe_key(config: Mapping[str, Any]) -> dict[str, Any]:
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
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a broken file just means "unknown"
        return None


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _last_error(folder: Path) -> str | None:
    """The last ERROR line of the job's log files (Hydra writes ``<job>.log`` in the job folder)."""
    lines: list[str] = []
    for log in sorted(folder.glob("*.log")):
        try:
            lines += [
                ln.strip()
                for ln in log.read_text(errors="replace").splitlines()
                if "ERROR" in ln or "Error:" in ln
            ]
        except OSError:
            continue
    if not lines:
        return None
    msg = re.sub(r"^\[[^\]]*\]\[[^\]]*\]\[ERROR\] - ", "", lines[-1])
    return msg[:300]


def _is_job_folder(path: Path) -> bool:
    return (
        (path / ".hydra").is_dir() or (path / "metrics.json").is_file() or (path / "profile.json").is_file()
    )


def _job_folders(sweep: Path) -> list[Path]:
    if _is_job_folder(sweep) and not (sweep / "multirun.yaml").is_file():
        return [sweep]  # a single run folder
    found, skip = [], {"tables", "wandb", "checkpoints", "eval", "csv", ".hydra"}
    stack = [(sweep, 0)]
    while stack:
        folder, depth = stack.pop()
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in skip):
            if _is_job_folder(child):
                found.append(child)
            elif depth < 2:
                stack.append((child, depth + 1))
    return sorted(found, key=_job_order)


def _job_order(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, str(path))


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
    choices["cell"] = record.get(
        "cell", (config.get("rnn") or {}).get("cell") if isinstance(config.get("rnn"), Mapping) else None
    )
    seed = record.get("seed", config.get("seed"))
    if metrics is not None:
        status = metrics.get("status") or "unknown"
        kind = "train"
    elif profile is not None:
        status = "profiled" if profile.get("status") == "completed" else "failed"
        kind = "profile"
    else:
        status, kind = "no-metrics", ("profile" if (folder / "profile.log").exists() else "train")
    error = (metrics or {}).get("error") or (profile or {}).get("error")
    if status in ("failed", "no-metrics", "unknown") and not error:
        error = _last_error(folder)
    return Job(
        source=str(folder),
        status=status,
        choices=choices,
        seed=seed,
        model=_model_key(choices, config),
        recipe=_recipe_key(config),
        metrics=metrics or {},
        profile=profile if profile and profile.get("status") == "completed" else None,
        overrides=[str(o) for o in overrides],
        error=error,
        kind=kind,
    )


def planned_jobs(sweep: Path) -> list[list[str]] | None:
    """The override lists of every job the sweep planned (from ``multirun.yaml``, basic sweeper);
    ``None`` when that cannot be known."""
    from omegaconf import OmegaConf

    path = sweep / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = OmegaConf.load(path)
        if not str(cfg.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = cfg.hydra.sweeper.get("params") or {}
        args = [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(args)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # noqa: BLE001 - an unreadable plan only loses the "pending" rows
        return None


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _identity(overrides: Sequence[str]) -> frozenset[str]:
    """A job's overrides without its seed: the same for every seed of a configuration."""
    return frozenset(o for o in overrides if _key_of(o) != "seed")


def _pending_job(sweep: Path, overrides: list[str], sibling: Job | None, others: Sequence[Job]) -> Job:
    """A planned job without a folder. Its configuration is that of a started job differing only
    in the seed; failing that, the group choices its overrides name (the other groups as in the
    sweep's started jobs)."""
    values = {_key_of(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    seed = values.get("seed")
    seed = int(seed) if seed is not None and seed.lstrip("-").isdigit() else seed
    if sibling is not None:
        return Job(
            f"{sweep} (not started)",
            "pending",
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
    return Job(
        f"{sweep} (not started)", "pending", choices, seed, {k: choices[k] for k in BASE}, overrides=overrides
    )


def read_sweep(sweep: str | Path) -> list[Job]:
    """Every job of a multirun folder (or one run folder), planned-but-not-started ones as ``pending``."""
    sweep = Path(sweep).expanduser()
    if not sweep.is_dir():
        raise TablesError(
            f"{sweep}: no such folder (give a Hydra multirun folder, e.g. outputs/multirun/<date>/<time>)"
        )
    jobs = [read_job(folder) for folder in _job_folders(sweep)]
    plan = planned_jobs(sweep)
    if plan:
        seen = {frozenset(j.overrides) for j in jobs}
        siblings = {_identity(j.overrides): j for j in jobs if j.overrides}
        for overrides in plan:
            if frozenset(overrides) not in seen:
                jobs.append(_pending_job(sweep, list(overrides), siblings.get(_identity(overrides)), jobs))
    if not jobs:
        raise TablesError(f"{sweep}: no job folders (no metrics.json, profile.json or .hydra/ below it)")
    return jobs


_WANDB_STATES = {
    "finished": "completed",
    "failed": "failed",
    "crashed": "failed",
    "killed": "interrupted",
    "running": "running",
}


def read_wandb(project: str, group: str | None = None, api: Any = None) -> list[Job]:
    """The runs of W&B ``entity/project`` (only those of ``group`` if given), as jobs.

    Needs W&B online (credentials, network); offline it raises :class:`TablesError` saying so.
    ``api`` is a ``wandb.Api``-like object (tests).
    """
    from crnn.runtime import wandb_mode

    if api is None:
        mode = wandb_mode(None)
        if mode != "online":
            raise TablesError(
                f"--wandb {project}: W&B is {mode} here (WANDB_MODE={mode!r} or no credentials), so its API "
                "cannot be reached. Log in (`wandb login` or WANDB_API_KEY) on a machine with network, or "
                "build the tables from the sweep folders: crnn-tables outputs/multirun/<date>/<time>"
            )
        try:
            import wandb

            api = wandb.Api(timeout=30)
        except Exception as err:  # noqa: BLE001
            raise TablesError(f"--wandb {project}: cannot reach the W&B API: {err}") from err
    try:
        runs = list(api.runs(project, filters={"group": group} if group else None))
    except Exception as err:  # noqa: BLE001 - network / auth / unknown project
        raise TablesError(f"--wandb {project} (group {group!r}): the W&B API failed: {err}") from err
    jobs = []
    for run in runs:
        config = dict(run.config or {})
        summary = dict(getattr(run.summary, "_json_dict", None) or dict(run.summary or {}))
        choices = dict(config.get("choices") or {})
        choices.setdefault(
            "cell", (config.get("rnn") or {}).get("cell") if isinstance(config.get("rnn"), Mapping) else None
        )
        status = _WANDB_STATES.get(getattr(run, "state", ""), getattr(run, "state", "unknown"))
        metrics = {k: v for k, v in summary.items() if not str(k).startswith("_")}
        jobs.append(
            Job(
                source=f"wandb:{project}/{getattr(run, 'id', '?')}",
                status=status,
                choices=choices,
                seed=config.get("seed"),
                model=_model_key(choices, config),
                recipe=_recipe_key(config),
                metrics=metrics,
                error=None if status == "completed" else f"W&B state {getattr(run, 'state', '?')}",
            )
        )
    if not jobs:
        raise TablesError(f"--wandb {project}: no runs" + (f" in group {group!r}" if group else ""))
    return jobs


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------


def pick_metric(jobs: Sequence[Job], requested: str | None = None) -> str:
    """``requested``, else ``test/acc1`` (classification) or ``val/AP`` (detection), else ``val/acc1``:
    the first one found in the completed jobs' metrics."""
    if requested:
        return requested
    done = [j for j in jobs if j.status == "completed"]
    for name in DEFAULT_METRICS:
        if any(isinstance(j.metrics.get(name), (int, float)) for j in done):
            return name
    return "val/AP" if any(j.choices.get("task") == "detection" for j in jobs) else "test/acc1"


def _natural(value: Any) -> tuple:
    if value is None:
        return (0, ())
    parts = re.split(r"(\d+)", str(value))
    return (1, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p))


def _ordered(value: Any, order: Sequence[str]) -> tuple:
    return (order.index(value), ()) if value in order else (len(order), _natural(value))


def _freeze(d: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in d.items()))


def _first(values: Iterable[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def build_rows(jobs: Sequence[Job], metric: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per configuration) and the names of the varying setting columns to show."""
    train_jobs = [j for j in jobs if j.kind == "train"]
    profiles: dict[tuple, dict[str, Any]] = {}
    for j in jobs:
        if j.profile is not None:
            profiles.setdefault(_freeze(j.model), j.profile)

    groups: dict[tuple, list[Job]] = defaultdict(list)
    for j in train_jobs:
        groups[(_freeze(j.model), _freeze(j.recipe))].append(j)
    # profile-only configurations (a profile sweep alone, or models not trained yet)
    trained_models = {key[0] for key in groups}
    for j in jobs:
        if j.kind == "profile" and _freeze(j.model) not in trained_models:
            groups[(_freeze(j.model), ())].append(j)
            trained_models.add(_freeze(j.model))

    rows = []
    for (model_key, _), members in groups.items():
        first = members[0]
        done = [
            j for j in members if j.status == "completed" and isinstance(j.metrics.get(metric), (int, float))
        ]
        values = [float(j.metrics[metric]) for j in done]
        prof = profiles.get(model_key)
        counts: dict[str, int] = defaultdict(int)
        for j in members:
            counts["completed" if j in done else ("profiled" if j.kind == "profile" else j.status)] += 1
        row = {
            **{k: first.model.get(k) for k in BASE},
            "settings": {**first.model, **first.recipe},
            "cell": _first(j.choices.get("cell") for j in members),
            "params": _first([*(j.metrics.get("params") for j in members), (prof or {}).get("params")]),
            "macs": _first([*(j.metrics.get("macs") for j in members), (prof or {}).get("macs")]),
            "peak_activation_bytes": (prof or {}).get("peak_activation_bytes"),
            "latency_ms": (prof or {}).get("latency_ms"),
            "metric": metric,
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            "n": len(values),
            "seeds": sorted({j.seed for j in done}, key=_natural),
            "jobs": len([j for j in members if j.kind == "train"]),
            "status": ", ".join(
                f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] != "completed")
            ),
            "complete": all(j.status == "completed" for j in members if j.kind == "train") and bool(done),
        }
        rows.append(row)

    # columns: settings that vary between rows and are not fixed by the group choices
    keys = sorted({k for r in rows for k in r["settings"]} - set(BASE))
    varying = []
    for k in keys:
        vals = {json.dumps(r["settings"].get(k), default=str) for r in rows}
        if len(vals) < 2:
            continue
        by_base: dict[tuple, set] = defaultdict(set)
        for r in rows:
            by_base[tuple(r[b] for b in BASE)].add(json.dumps(r["settings"].get(k), default=str))
        if any(len(v) > 1 for v in by_base.values()):
            varying.append(k)

    def sort_key(r: dict[str, Any]) -> tuple:
        return (
            _natural(r["data"]),
            _ordered(r["backbone"], BACKBONE_ORDER),
            _ordered(r["rnn"], LAYER_ORDER),
            _ordered(r["head"], HEAD_ORDER),
            *(_natural(r["settings"].get(k)) for k in varying),
        )

    rows.sort(key=sort_key)
    return rows, varying


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------


def _scale(rows: Sequence[dict[str, Any]], requested: str = "auto") -> float:
    if requested != "auto":
        return float(requested)
    values = [r["mean"] for r in rows if r["mean"] is not None]
    return 100.0 if values and all(0.0 <= v <= 1.0 for v in values) else 1.0


def _millions(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _value(r: dict[str, Any], scale: float) -> str:
    if r["mean"] is None:
        return "-"
    if r["n"] > 1:
        return f"{r['mean'] * scale:.2f} ± {r['std'] * scale:.2f}"
    return f"{r['mean'] * scale:.2f}"


def _short(key: str) -> str:
    return key.removeprefix("task.")


def _groups(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for r in rows:
        if out and (out[-1][0]["data"], out[-1][0]["backbone"]) == (r["data"], r["backbone"]):
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _table_columns(rows: Sequence[dict[str, Any]], varying: Sequence[str]) -> list[str]:
    cols = []
    if len({r["data"] for r in rows}) > 1:
        cols.append("data")
    cols += ["backbone", "rnn"]
    if len({r["head"] for r in rows}) > 1:
        cols.append("head")
    cols += list(varying)
    return cols


def _cell(r: dict[str, Any], col: str) -> str:
    value = r[col] if col in BASE else r["settings"].get(col)
    return "-" if value is None else str(value)


def markdown(rows: Sequence[dict[str, Any]], varying: Sequence[str], metric: str | None, scale: float) -> str:
    """The main table: grouped by data/backbone (name on the group's first row), best mean in bold."""
    cols = _table_columns(rows, varying)
    has_prof = any(r["peak_activation_bytes"] is not None for r in rows)
    unit = " (%)" if scale == 100 else ""
    header = [*(_short(c) for c in cols), "params", "MACs"]
    if has_prof:
        header += ["peak act. (KiB)", "latency (ms)"]
    header += [f"{metric}{unit}", "seeds", "status"] if metric else ["status"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < len(cols) else "---:" for i in range(len(header) - 1)) + "|---|",
    ]
    for group in _groups(rows):
        best = max((r["mean"] for r in group if r["mean"] is not None), default=None)
        for i, r in enumerate(group):
            cells = _leading_cells(r, cols, first=i == 0, has_prof=has_prof)
            value = _value(r, scale)
            if best is not None and r["mean"] == best and len(group) > 1:
                value = f"**{value}**"
            cells += [value, str(r["n"]), r["status"]] if metric else [r["status"]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _leading_cells(
    r: dict[str, Any], cols: Sequence[str], first: bool, has_prof: bool, escape=lambda text: text
) -> list[str]:
    """A row's cells before the metric: its configuration (data and backbone only on the first row
    of a group), params, MACs and, with a profile, peak activations (KiB) and latency (ms)."""
    cells = [escape(_cell(r, c)) if (first or c not in ("data", "backbone")) else "" for c in cols]
    cells += [_millions(r["params"]), _millions(r["macs"])]
    if has_prof:
        peak = r["peak_activation_bytes"]
        cells += [
            "-" if peak is None else f"{peak / 1024:.1f}",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}",
        ]
    return cells


def _tex(s: str) -> str:
    return (
        s.replace("\\", r"\textbackslash{}")
        .replace("_", r"\_")
        .replace("%", r"\%")
        .replace("&", r"\&")
        .replace("#", r"\#")
    )


def latex(rows: Sequence[dict[str, Any]], varying: Sequence[str], metric: str | None, scale: float) -> str:
    cols = _table_columns(rows, varying)
    has_prof = any(r["peak_activation_bytes"] is not None for r in rows)
    header = [*(_short(c) for c in cols), "Params", "MACs"]
    if has_prof:
        header += ["Act. (KiB)", "Lat. (ms)"]
    if metric:
        header += [metric + (" (\\%)" if scale == 100 else ""), "$n$"]
    spec = "l" * len(cols) + "r" * (len(header) - len(cols))
    out = [
        "% generated by crnn-tables",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(h) if "\\%" not in h else _tex(h.replace(" (\\%)", "")) + " (\\%)" for h in header)
        + " \\\\",
        "\\midrule",
    ]
    for g, group in enumerate(_groups(rows)):
        if g:
            out.append("\\midrule")
        best = max((r["mean"] for r in group if r["mean"] is not None), default=None)
        for i, r in enumerate(group):
            cells = _leading_cells(r, cols, first=i == 0, has_prof=has_prof, escape=_tex)
            if r["mean"] is None:
                value = "-"
            elif r["n"] > 1:
                value = f"{r['mean'] * scale:.2f} $\\pm$ {r['std'] * scale:.2f}"
            else:
                value = f"{r['mean'] * scale:.2f}"
            if best is not None and r["mean"] == best and len(group) > 1:
                value = f"\\textbf{{{value}}}"
            if metric:
                cells += [value, str(r["n"])]
            out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def rows_csv(rows: Sequence[dict[str, Any]], varying: Sequence[str]) -> str:
    buf = io.StringIO()
    fields = [
        *BASE,
        "cell",
        *varying,
        "params",
        "macs",
        "peak_activation_bytes",
        "latency_ms",
        "metric",
        "mean",
        "std",
        "n",
        "seeds",
        "jobs",
        "status",
    ]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        line = {k: r.get(k) for k in fields if k in r}
        line.update({k: r["settings"].get(k) for k in varying})
        line["seeds"] = " ".join(map(str, r["seeds"]))
        writer.writerow(line)
    return buf.getvalue()


def jobs_csv(jobs: Sequence[Job], metric: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["source", "kind", "status", *BASE, "cell", "seed", "overrides", metric, "params", "macs", "error"]
    )
    for j in jobs:
        writer.writerow(
            [
                j.source,
                j.kind,
                j.status,
                *(j.choices.get(k) for k in BASE),
                j.choices.get("cell"),
                j.seed,
                " ".join(j.overrides),
                j.metrics.get(metric),
                j.metrics.get("params", (j.profile or {}).get("params")),
                j.metrics.get("macs", (j.profile or {}).get("macs")),
                j.error or "",
            ]
        )
    return buf.getvalue()


def _missing_metric(j: Job, metric: str) -> bool:
    return (
        j.kind == "train" and j.status == "completed" and not isinstance(j.metrics.get(metric), (int, float))
    )


def incomplete_section(jobs: Sequence[Job], metric: str) -> str:
    """Every job that is not completed (or completed without ``metric``), with the reason."""
    bad = [j for j in jobs if j.status not in ("completed", "profiled") or _missing_metric(j, metric)]
    with_overrides = [frozenset(j.overrides) for j in jobs if j.overrides]
    common = frozenset.intersection(*with_overrides) if len(with_overrides) > 1 else frozenset()
    if not bad:
        return "## Incomplete jobs\n\nNone: every job completed.\n"
    lines = [
        f"## Incomplete jobs ({len(bad)})",
        "",
        "| job | configuration | seed | status | reason |",
        "|---|---|---|---|---|",
    ]
    for j in bad:
        reason = (
            j.error
            or (f"completed, but metrics.json has no {metric}" if _missing_metric(j, metric) else "")
            or {
                "pending": "planned, not started",
                "no-metrics": "job folder without metrics.json",
                "running": "still running (or killed without a final status)",
            }.get(j.status, "")
        ).replace("|", "/")
        seed = "-" if j.seed is None else j.seed
        lines.append(f"| {j.source} | {j.label(common)} | {seed} | {j.status} | {reason} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower or equal cost ``x`` and higher metric ``y``), by ``x``."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot(
    rows: Sequence[dict[str, Any]],
    varying: Sequence[str],
    metric: str,
    scale: float,
    x_key: str,
    path: Path,
    title: str = "",
) -> Path | None:
    """Metric vs ``x_key`` (``macs`` or ``params``): one marker per layer type, colour per backbone,
    error bars = std over seeds, the Pareto front as a dashed step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["mean"] is not None and r[x_key] is not None]
    if not pts:
        return None
    backbones = list(dict.fromkeys(r["backbone"] for r in pts))
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(backbones)}
    fig, ax = plt.subplots(figsize=(7, 4.8))
    seen_layers: set[str] = set()
    for r in pts:
        x, y = r[x_key] / 1e6, r["mean"] * scale
        marker = MARKERS.get(r["rnn"], "o")
        ax.errorbar(
            x,
            y,
            yerr=(r["std"] or 0) * scale,
            fmt=marker,
            color=colours[r["backbone"]],
            ms=9 if marker == "*" else 7,
            capsize=3,
            mec="black",
            mew=0.5,
            zorder=3,
        )
        seen_layers.add(r["rnn"])
        extra = ", ".join(
            f"{_short(k).split('.')[-1]}={r['settings'].get(k)}"
            for k in varying
            if r["settings"].get(k) is not None
        )
        if extra and len(pts) <= 40:
            ax.annotate(extra, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="0.3")
    front = pareto_front([(r[x_key] / 1e6, r["mean"] * scale) for r in pts])
    if len(front) > 1:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            ls="--",
            color="0.4",
            lw=1,
            zorder=2,
            label="Pareto front",
        )
    else:
        ax.plot(
            [front[0][0]],
            [front[0][1]],
            ls="none",
            marker="o",
            mfc="none",
            mec="0.4",
            ms=14,
            label="Pareto front",
        )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="none", marker=MARKERS.get(layer, "o"), color="0.5", mec="black", ms=8, label=layer)
        for layer in sorted(seen_layers, key=lambda v: _ordered(v, LAYER_ORDER))
    ]
    if len(backbones) > 1:
        handles += [Line2D([], [], ls="none", marker="s", color=colours[b], ms=8, label=b) for b in backbones]
    handles += [h for h in ax.get_legend_handles_labels()[0] if h.get_label() == "Pareto front"]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
    ax.set_xlabel({"macs": "MACs (M)", "params": "parameters (M)"}[x_key])
    ax.set_ylabel(f"{metric}" + (" (%)" if scale == 100 else "") + " (mean ± std over seeds)")
    ax.set_title(title or f"{metric} vs {'MACs' if x_key == 'macs' else 'parameters'}")
    xs = [r[x_key] for r in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------


@dataclass
class TablesResult:
    metric: str
    rows: list[dict[str, Any]]
    jobs: list[Job]
    markdown: str
    files: dict[str, Path]


def make_tables(
    sweeps: Sequence[str | Path] = (),
    out_dir: str | Path | None = None,
    metric: str | None = None,
    wandb_project: str | None = None,
    wandb_group: str | None = None,
    scale: str = "auto",
    plots: bool = True,
    api: Any = None,
) -> TablesResult:
    """Read the sources, write every table and plot to ``out_dir``; returns what was written."""
    jobs: list[Job] = []
    for sweep in sweeps:
        jobs += read_sweep(sweep)
    if wandb_project:
        jobs += read_wandb(wandb_project, wandb_group, api=api)
    if not jobs:
        raise TablesError(
            "no sources: give one or more multirun folders, or --wandb ENTITY/PROJECT --group GROUP"
        )
    if out_dir is None:
        if not sweeps:
            raise TablesError("--out is needed with --wandb (there is no sweep folder to write into)")
        out_dir = Path(sweeps[0]) / "tables"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    metric = pick_metric(jobs, metric)
    rows, varying = build_rows(jobs, metric)
    factor = _scale(rows, scale)
    train_jobs = [j for j in jobs if j.kind == "train"]
    shown = metric if train_jobs else None  # profile sweeps only: a complexity table
    sources = ", ".join(str(s) for s in sweeps) + (
        f"{', ' if sweeps else ''}W&B {wandb_project} {wandb_group or ''}" if wandb_project else ""
    )
    done = sum(j.status == "completed" for j in train_jobs)
    if shown:
        intro = (
            f"Sources: {sources}. Jobs: {done} completed of {len(train_jobs)} training jobs"
            + (f" ({len(train_jobs) - done} not completed: see below)" if len(train_jobs) > done else "")
            + f". Metric: mean ± sample std over seeds{' (x100)' if factor == 100 else ''};"
            + " bold = best of its group."
        )
    else:
        intro = f"Sources: {sources}. Profile jobs only (crnn-profile): complexity, no metric."
    md = "\n".join(
        [
            f"# {shown or 'Complexity'}: {len(rows)} configurations",
            "",
            intro,
            "",
            markdown(rows, varying, shown, factor),
            "",
            incomplete_section(jobs, metric),
        ]
    )
    files = {
        "markdown": out / "table.md",
        "csv": out / "table.csv",
        "latex": out / "table.tex",
        "jobs": out / "jobs.csv",
    }
    files["markdown"].write_text(md)
    files["csv"].write_text(rows_csv(rows, varying))
    files["latex"].write_text(latex(rows, varying, shown, factor))
    files["jobs"].write_text(jobs_csv(jobs, metric))
    if plots and shown:
        safe = re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")
        for x_key in ("macs", "params"):
            path = plot(rows, varying, metric, factor, x_key, out / f"{safe}_vs_{x_key}.png")
            if path is not None:
                files[f"plot_{x_key}"] = path
    return TablesResult(metric, rows, jobs, md, files)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="crnn-tables",
        description="Paper-style tables (Markdown, CSV, LaTeX) and plots from crnn sweeps or a W&B group.",
    )
    parser.add_argument("sweeps", nargs="*", help="Hydra multirun folders (crnn-train / crnn-profile -m)")
    parser.add_argument("--metric", help="metric to tabulate (default: test/acc1, or val/AP for detection)")
    parser.add_argument("--out", help="output folder (default: <first sweep>/tables)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B (online only)")
    parser.add_argument("--group", help="W&B group (the experiment name, or the sweep's group)")
    parser.add_argument(
        "--scale",
        default="auto",
        help="multiply the metric for display: auto (x100 for values in [0,1]), 1, 100",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    if not args.sweeps and not args.wandb:
        parser.error("give one or more multirun folders, or --wandb ENTITY/PROJECT [--group GROUP]")
    try:
        result = make_tables(
            args.sweeps, args.out, args.metric, args.wandb, args.group, args.scale, not args.no_plots
        )
    except TablesError as err:
        print(f"crnn-tables: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result.markdown)
    print("Written:\n" + "\n".join(f"  {p}" for p in result.files.values()))


if __name__ == "__main__":
    main()
