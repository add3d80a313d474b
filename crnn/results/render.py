"""Rows and jobs to text: the paper table (Markdown, LaTeX, CSV), the per-job CSV, the
incomplete-jobs section, a sweep's status summary and the per-job complexity table."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from crnn.results.aggregate import jobs_frame
from crnn.results.read import BASE, Job

__all__ = [
    "caption",
    "embedded_markdown",
    "embedded_table",
    "incomplete_section",
    "jobs_csv",
    "latex",
    "markdown",
    "profile_markdown",
    "profile_table",
    "rows_csv",
    "status_counts",
    "status_report",
]

CAPTION = (
    "Test metrics are those of the best checkpoint (the epoch with the best validation monitor, "
    "e.g. val/acc1 or val/AP); validation metrics are the best epoch's where the run recorded it."
)


def caption(metric: str | None, scale: float) -> str:
    if metric is None:
        return "Complexity per model (params and MACs per image)."
    unit = " (x100)" if scale == 100 else ""
    return f"{metric}: mean ± sample std over seeds{unit}; bold = best of its group. {CAPTION}"


def _millions(n: Any) -> str:
    return "-" if n is None or pd.isna(n) else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _value(r: dict[str, Any], scale: float, pm: str) -> str:
    if r["mean"] is None:
        return "-"
    if r["n"] > 1:
        return f"{r['mean'] * scale:.2f} {pm} {r['std'] * scale:.2f}"
    return f"{r['mean'] * scale:.2f}"


def _short(key: str) -> str:
    return key.removeprefix("task.")


def _columns(rows: Sequence[dict[str, Any]], varying: Sequence[str]) -> list[str]:
    cols = ["data"] if len({r["data"] for r in rows}) > 1 else []
    cols += ["backbone", "rnn"]
    if len({r["head"] for r in rows}) > 1:
        cols.append("head")
    return cols + list(varying)


def _display(
    rows: Sequence[dict[str, Any]],
    varying: Sequence[str],
    metric: str | None,
    scale: float,
    pm: str,
    bold: str,
    units: dict[str, str],
) -> tuple[pd.DataFrame, list[int]]:
    """The table as strings, and the index of each group's first row (group = data + backbone):
    data and backbone only on that row, the best mean of a group of several rows in ``bold``."""
    cols = _columns(rows, varying)
    has_prof = any(r["peak_activation_bytes"] is not None for r in rows)
    frame = pd.DataFrame(rows)
    group = frame["data"].astype(str) + "\0" + frame["backbone"].astype(str)
    block = group.ne(group.shift()).cumsum()  # rows are sorted: a group is a run of equal keys
    starts = list(block.drop_duplicates().index)
    best = frame.groupby(block)["mean"].transform("max")
    size = block.map(block.value_counts())
    table = pd.DataFrame(index=frame.index)
    for c in cols:
        values = frame[c] if c in BASE else frame["settings"].map(lambda s, c=c: s.get(c))
        table[_short(c)] = values.map(lambda v: "-" if v is None else str(v))
        if c in ("data", "backbone"):
            table.loc[~table.index.isin(starts), _short(c)] = ""
    table[units["params"]] = frame["params"].map(_millions)
    table[units["macs"]] = frame["macs"].map(_millions)
    if has_prof:
        table[units["peak"]] = frame["peak_activation_bytes"].map(
            lambda b: "-" if b is None or pd.isna(b) else f"{b / 1024:.1f}"
        )
        table[units["latency"]] = frame["latency_ms"].map(
            lambda t: "-" if t is None or pd.isna(t) else f"{t:.2f}"
        )
    if metric:
        values = [_value(r, scale, pm) for r in rows]
        for i, r in enumerate(rows):
            if r["mean"] is not None and r["mean"] == best.iloc[i] and size.iloc[i] > 1:
                values[i] = bold.format(values[i])
        table[metric + (units["percent"] if scale == 100 else "")] = values
        table[units["n"]] = [str(r["n"]) for r in rows]
    return table, starts


_MD_UNITS = {
    "params": "params",
    "macs": "MACs",
    "peak": "peak act. (KiB)",
    "latency": "latency (ms)",
    "percent": " (%)",
    "n": "seeds",
}
_TEX_UNITS = {
    "params": "Params",
    "macs": "MACs",
    "peak": "Act. (KiB)",
    "latency": "Lat. (ms)",
    "percent": " (%)",
    "n": "seeds",
}


def markdown(rows: Sequence[dict[str, Any]], varying: Sequence[str], metric: str | None, scale: float) -> str:
    """The main table: grouped by data/backbone (name on the group's first row), best mean in bold,
    the jobs' status counts last."""
    table, _ = _display(rows, varying, metric, scale, "±", "**{}**", _MD_UNITS)
    table["status"] = [r["status"] for r in rows]
    n_text = len(_columns(rows, varying))
    align = ["left"] * n_text + ["right"] * (table.shape[1] - n_text - 1) + ["left"]
    return table.to_markdown(index=False, colalign=align, disable_numparse=True)


def latex(rows: Sequence[dict[str, Any]], varying: Sequence[str], metric: str | None, scale: float) -> str:
    """The main table as a booktabs ``tabular`` (a rule between data/backbone groups)."""
    table, starts = _display(rows, varying, metric, scale, "$\\pm$", "\\textbf{{{}}}", _TEX_UNITS)
    n_text = len(_columns(rows, varying))
    text_cols = list(table.columns[:n_text])
    styler = table.style.hide(axis="index").format(escape="latex", subset=text_cols)
    styler = styler.format_index(escape="latex", axis=1)
    body = styler.to_latex(column_format="l" * n_text + "r" * (table.shape[1] - n_text), hrules=True)
    lines = body.splitlines()
    first_row = lines.index("\\midrule") + 1
    for offset, start in enumerate(s for s in starts if s):  # a rule before each later group
        lines.insert(first_row + start + offset, "\\midrule")
    return "% generated by crnn-tables\n% " + caption(metric, scale) + "\n" + "\n".join(lines) + "\n"


def rows_csv(rows: Sequence[dict[str, Any]], varying: Sequence[str]) -> str:
    fields = [*BASE, "cell", *varying, "params", "macs", "peak_activation_bytes", "latency_ms"]
    fields += ["metric", "mean", "std", "n", "seeds", "jobs", "status"]
    frame = pd.DataFrame([{**r, **{k: r["settings"].get(k) for k in varying}} for r in rows])
    frame["seeds"] = frame["seeds"].map(lambda s: " ".join(map(str, s)))
    for key in ("params", "macs", "n", "jobs", "peak_activation_bytes"):
        frame[key] = frame[key].astype("Int64")
    return frame.reindex(columns=fields).to_csv(index=False)


def jobs_csv(jobs: Sequence[Job], metric: str) -> str:
    frame = jobs_frame(jobs, metric).rename(columns={"value": metric})
    for key in ("params", "macs"):
        frame[key] = frame[key].astype("Int64")
    fields = ["source", "run_id", "kind", "status", *BASE, "cell", "seed", "overrides", metric]
    return frame[[*fields, "params", "macs", "error"]].to_csv(index=False)


def _missing_metric(j: Job, frame_value: Any) -> bool:
    return j.kind == "train" and j.status == "completed" and pd.isna(frame_value)


_REASONS = {
    "pending": "planned, not started (queued)",
    "no-metrics": "job folder without metrics.json",
    "running": "still running (or killed without a final status)",
}


def incomplete_section(jobs: Sequence[Job], metric: str) -> str:
    """Every job that is not completed (or completed without ``metric``), with the reason."""
    values = jobs_frame(jobs, metric)["value"].tolist()
    bad = [
        (j, v)
        for j, v in zip(jobs, values, strict=True)
        if j.status not in ("completed", "profiled") or _missing_metric(j, v)
    ]
    if not bad:
        return "## Incomplete jobs\n\nNone: every job completed.\n"
    with_overrides = [frozenset(j.overrides) for j in jobs if j.overrides]
    common = frozenset.intersection(*with_overrides) if len(with_overrides) > 1 else frozenset()
    lines = []
    for j, v in bad:
        reason = (
            j.error
            or (f"completed, but metrics.json has no {metric}" if _missing_metric(j, v) else "")
            or _REASONS.get(j.status, "")
        )
        if j.traceback:
            reason += f" (traceback: {j.traceback})"
        lines.append(
            {
                "job": j.source,
                "configuration": j.label(common),
                "seed": "-" if j.seed is None else str(j.seed),
                "status": j.status,
                "reason": reason.replace("|", "/"),
            }
        )
    table = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
    return f"## Incomplete jobs ({len(bad)})\n\n{table}\n"


# A job's status, as a sweep's status summary counts it.
_BUCKETS = {
    "completed": "completed",
    "profiled": "completed",
    "running": "running",
    "no-metrics": "running",  # started (its folder exists); failed if its log holds an error
    "pending": "queued",
    "failed": "failed",
    "interrupted": "interrupted",
}
BUCKETS = ("completed", "running", "queued", "failed", "interrupted", "unknown")


def _bucket(j: Job) -> str:
    if j.status == "no-metrics" and j.error:
        return "failed"
    return _BUCKETS.get(j.status, "unknown")


def status_counts(jobs: Sequence[Job]) -> dict[str, int]:
    """How many jobs are completed / running / queued / failed (/ interrupted / unknown)."""
    counts = pd.Series([_bucket(j) for j in jobs], dtype="object").value_counts()
    return {b: int(counts.get(b, 0)) for b in BUCKETS}


def status_report(jobs: Sequence[Job], title: str, now: float | None = None) -> str:
    """A sweep's state: the counts; the failed (and interrupted) jobs with their message; the
    running ones with the time since they last wrote (a long silence: killed without a status)."""
    counts = status_counts(jobs)
    shown = [f"{counts[b]} {b}" for b in BUCKETS if counts[b] or b in BUCKETS[:4]]
    lines = [f"{title}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}: " + ", ".join(shown)]
    for bucket in ("failed", "interrupted"):
        bad = [j for j in jobs if _bucket(j) == bucket]
        if bad:
            lines += ["", f"{bucket.capitalize()} jobs:"]
            for j in bad:
                where = f" (traceback: {j.traceback})" if j.traceback else ""
                lines.append(f"  {j.source} [{j.label()}, seed {j.seed}]: {j.error or 'no message'}{where}")
    running = [j for j in jobs if _bucket(j) == "running"]
    if running:
        now = time.time() if now is None else now
        lines += ["", "Running jobs:"]
        for j in running:
            age = "" if j.updated is None else f": last wrote {_ago(now - j.updated)} ago"
            lines.append(f"  {j.source} [{j.label()}, seed {j.seed}]{age}")
    return "\n".join(lines) + "\n"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def profile_table(jobs: Sequence[Job]) -> pd.DataFrame:
    """One line per profiling job: its model, exact params and MACs, peak activations, latency (and
    int8 TFLM flash, arena and accuracies when a job measured them: ``profile.embedded=true``)."""
    embedded = any("arena_kib" in (j.profile or {}) for j in jobs)
    lines = []
    for j in jobs:
        prof = j.profile or {}
        peak = prof.get("peak_activation_bytes")
        extra = [
            o
            for o in j.overrides
            if o.split("=", 1)[0].lstrip("+~") not in (*BASE, "seed")
            and not o.startswith(("profile.", "hydra.", "data.root"))
        ]
        lines.append(
            {
                "job": j.source.rsplit("/", 1)[-1],
                **{k: j.choices.get(k) for k in ("backbone", "rnn", "head", "cell")},
                "overrides": " ".join(extra),
                "params": prof.get("params"),
                "macs": prof.get("macs"),
                "peak_act_kib": None if peak is None else round(peak / 1024, 1),
                "latency_ms": None if prof.get("latency_ms") is None else round(prof["latency_ms"], 3),
                **{
                    k: _round(prof.get(k))
                    for k in ("flash_kib", "arena_kib", "float_acc", "int8_acc")
                    if embedded
                },
                "status": "completed" if j.profile else f"{j.status}: {j.error or ''}",
            }
        )
    return pd.DataFrame(lines, dtype=object)  # object: ints stay ints, missing stays None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def profile_markdown(jobs: Sequence[Job]) -> str:
    """:func:`profile_table` as Markdown, params and MACs in full (``1,234,567``)."""
    return profile_table(jobs).to_markdown(index=False, intfmt=",", missingval="-")


EMBEDDED_CAPTION = (
    "int8: full-integer TFLite (ai-edge-quantizer a8w8, {cal} calibration training images) run in "
    "TensorFlow Lite Micro: flash = the int8 flatbuffer, arena = the tensor arena TFLM allocated. "
    "Accuracy (float: PyTorch) and int8 = float top-1 on {n_eval} test images, {weights}."
)
# Whose weights were measured: rows without ``weights`` are crnn-profile's, rows with it crnn-export's.
PROFILED_WEIGHTS = "of the weights crnn-profile measured (the config's seeded initialisation, untrained)"
NAMED_WEIGHTS = (
    "of the weights named (trained: the checkpoint's; untrained: the config's seeded initialisation)"
)


def embedded_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows measured with ``crnn-profile profile.embedded=true`` (or ``crnn-export --int8``): model,
    params, MACs and the int8 TFLM numbers (:data:`crnn.results.read.EMBEDDED_KEYS`, ``n_calibration``,
    ``n_eval``), and ``weights`` where a row names them (``trained`` / ``untrained``)."""
    lines = [
        {
            **{k: r[k] for k in BASE},
            **({"weights": r["weights"]} if "weights" in r else {}),
            "params": r["params"],
            "macs": r["macs"],
            **r["embedded"],
        }
        for r in rows
        if r.get("embedded")
    ]
    return pd.DataFrame(lines, dtype=object)


def _counts(values: pd.Series) -> str:
    return "/".join(str(v) for v in dict.fromkeys(values))


def embedded_markdown(rows: Sequence[dict[str, Any]]) -> str | None:
    """The embedded table of the paper's kind (backbone x layer [x weights] -> params, MACs, flash,
    arena, accuracy float / int8, agreement) and its caption; ``None`` when no row was measured."""
    table = embedded_table(rows)
    if table.empty:
        return None
    cols = _columns(table.to_dict("records"), ("weights",) if "weights" in table else ())
    shown = table[cols].map(lambda v: "-" if v is None else str(v))
    for c in ("data", "backbone"):
        if c in shown:
            shown.loc[shown[c].eq(shown[c].shift()), c] = ""
    shown = shown.rename(columns={"rnn": "layer"})
    shown["params"] = table["params"].map(_millions)
    shown["MACs"] = table["macs"].map(_millions)
    for key, name in (("flash_kib", "flash (KiB)"), ("arena_kib", "arena (KiB)")):
        shown[name] = table[key].map(lambda v: f"{v:.1f}")
    for key, name in (("float_acc", "acc float (%)"), ("int8_acc", "acc int8 (%)")):
        shown[name] = table[key].map(lambda v: "-" if v is None else f"{100 * v:.1f}")
    shown["int8 = float top-1 (%)"] = table["int8_agreement"].map(lambda v: f"{100 * v:.1f}")
    align = ["left"] * len(cols) + ["right"] * (shown.shape[1] - len(cols))
    text = shown.to_markdown(index=False, colalign=align, disable_numparse=True)
    note = EMBEDDED_CAPTION.format(
        cal=_counts(table["n_calibration"]),
        n_eval=_counts(table["n_eval"]),
        weights=NAMED_WEIGHTS if "weights" in table else PROFILED_WEIGHTS,
    )
    return f"{text}\n\n{note}"
