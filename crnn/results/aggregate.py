"""Jobs to rows: one row per configuration (seeds pooled: mean, sample std, n), in paper order.

A configuration is the group choices, every value of the model nodes and the training recipe;
jobs that differ only in ``seed`` are one row. The setting columns shown are those that vary
between rows of the same (data, backbone, rnn, head).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from crnn.results.read import BASE, EMBEDDED_KEYS, Job, metric_value

__all__ = ["DEFAULT_METRICS", "build_rows", "jobs_frame", "layer_order", "pick_metric", "sort_key"]

DEFAULT_METRICS = ("test/acc1", "val/AP", "val/acc1")


def pick_metric(jobs: Sequence[Job], requested: str | None = None) -> str:
    """``requested``, else ``test/acc1`` (classification) or ``val/AP`` (detection), else ``val/acc1``:
    the first one found in the completed jobs' metrics."""
    if requested:
        return requested
    done = [j for j in jobs if j.status == "completed"]
    for name in DEFAULT_METRICS:
        if any(metric_value(j.metrics, name) is not None for j in done):
            return name
    return "val/AP" if any(j.choices.get("task") == "detection" for j in jobs) else "test/acc1"


def _frozen(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def jobs_frame(jobs: Sequence[Job], metric: str) -> pd.DataFrame:
    """One line per job: its choices, seed, status, the metric (``NaN`` unless completed), params,
    MACs, and the keys of its model and configuration."""
    lines = []
    for j in jobs:
        value = metric_value(j.metrics, metric) if j.status == "completed" else None
        lines.append(
            {
                "source": j.source,
                "run_id": j.run_id,
                "kind": j.kind,
                "status": j.status,
                **{k: j.model.get(k, j.choices.get(k)) for k in BASE},
                "cell": j.choices.get("cell"),
                "seed": j.seed,
                "overrides": " ".join(j.overrides),
                "value": value,
                "params": j.metrics.get("params", (j.profile or {}).get("params")),
                "macs": j.metrics.get("macs", (j.profile or {}).get("macs")),
                "error": j.error or "",
                "model_id": _frozen(j.model),
                "config_id": _frozen({**j.model, **j.recipe}),
            }
        )
    frame = pd.DataFrame(lines, dtype=object)  # object: seeds, params and MACs stay ints (or None)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def _natural(value: Any) -> tuple:
    if value is None or (isinstance(value, float) and value != value):
        return (0, ())
    parts = re.split(r"(\d+)", str(value))
    return (1, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p))


def layer_order(name: Any) -> tuple:
    """Paper order from the layer registry; unknown names after the known ones."""
    from crnn.layers import layer_info

    try:
        return (0, layer_info(str(name)).order, ())
    except ValueError:
        return (1, 0, _natural(name))


def sort_key(row: dict[str, Any], varying: Sequence[str] = ()) -> tuple:
    """Data, backbone, layer (paper order, the conv baseline ``none`` first), head, then settings."""
    return (
        _natural(row["data"]),
        _natural(row["backbone"]),
        layer_order(row["rnn"]),
        _natural(row["head"]),
        *(_natural(row["settings"].get(k)) for k in varying),
    )


def _status(statuses: pd.Series) -> str:
    """``"2 completed, 1 failed"``: completed first, the others in order of appearance."""
    counts = statuses.value_counts(sort=False)
    order = sorted(counts.index, key=lambda s: s != "completed")
    return ", ".join(f"{counts[s]} {s}" for s in order)


def _varying(rows: list[dict[str, Any]]) -> list[str]:
    """Settings that differ between rows of the same (data, backbone, rnn, head)."""
    if len(rows) < 2:
        return []
    settings = pd.DataFrame([{**r["settings"], **{f"_{b}": r[b] for b in BASE}} for r in rows])
    keys = sorted(set(settings.columns) - set(BASE) - {f"_{b}" for b in BASE})
    shown = settings[keys].map(lambda v: json.dumps(v, default=str))
    per_model = shown.groupby([settings[f"_{b}"].astype(str) for b in BASE]).nunique()
    return [k for k in keys if (per_model[k] > 1).any()]


def build_rows(jobs: Sequence[Job], metric: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per configuration, paper order) and the names of the varying setting columns."""
    frame = jobs_frame(jobs, metric)
    by_id = {j.run_id: j for j in jobs}
    profiles: dict[str, dict[str, Any]] = {}
    for j in jobs:
        if j.profile is not None:
            profiles.setdefault(_frozen(j.model), j.profile)
    # profile-only configurations: models of a profile sweep that were not trained
    trained = set(frame.loc[frame["kind"] == "train", "model_id"])
    keep = (frame["kind"] == "train") | ~frame["model_id"].isin(trained)
    frame = frame[keep].copy()
    frame.loc[frame["kind"] == "profile", "config_id"] = frame["model_id"]
    frame = frame.drop_duplicates(["config_id", "run_id"])

    stats = frame.groupby("config_id", sort=False).agg(
        mean=("value", "mean"),
        std=("value", "std"),
        n=("value", "count"),
        params=("params", "first"),
        macs=("macs", "first"),
        cell=("cell", "first"),
        status=("status", _status),
        jobs=("kind", lambda k: int((k == "train").sum())),
        first=("run_id", "first"),
    )
    rows = []
    for config_id, s in stats.iterrows():
        members = frame[frame["config_id"] == config_id]
        done = members[members["value"].notna()]
        first = by_id[s["first"]]
        prof = profiles.get(members["model_id"].iloc[0]) or {}
        n = int(s["n"])
        trains = members[members["kind"] == "train"]
        rows.append(
            {
                **{k: first.model.get(k, first.choices.get(k)) for k in BASE},
                "settings": {**first.model, **first.recipe},
                "cell": None if pd.isna(s["cell"]) else s["cell"],
                "params": _int(s["params"], prof.get("params")),
                "macs": _int(s["macs"], prof.get("macs")),
                "peak_activation_bytes": prof.get("peak_activation_bytes"),
                "latency_ms": prof.get("latency_ms"),
                "embedded": _embedded(prof),
                "metric": metric,
                "mean": float(s["mean"]) if n else None,
                "std": (float(s["std"]) if n > 1 else 0.0) if n else None,
                "n": n,
                "seeds": sorted(set(done["seed"].dropna().tolist()), key=_natural),
                "jobs": int(s["jobs"]),
                "status": s["status"],
                "complete": bool(n) and bool((trains["status"] == "completed").all()),
            }
        )
    varying = _varying(rows)
    rows.sort(key=lambda r: sort_key(r, varying))
    return rows, varying


def _embedded(prof: dict[str, Any]) -> dict[str, Any] | None:
    """The int8 TFLM numbers of ``crnn-profile profile.embedded=true`` and their image counts."""
    if "arena_kib" not in prof:
        return None
    counts = {k: (prof.get("embedded") or {}).get(k) for k in ("n_calibration", "n_eval")}
    return {**{k: prof.get(k) for k in EMBEDDED_KEYS}, **counts}


def _int(value: Any, fallback: Any) -> int | None:
    value = fallback if value is None or pd.isna(value) else value
    return None if value is None else int(value)
