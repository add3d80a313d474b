"""Every table and plot of a set of sources, written to one folder (what ``crnn-tables`` does)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crnn.results.aggregate import build_rows, pick_metric
from crnn.results.plot import plot
from crnn.results.read import Job, TablesError, dedupe, read_sweep
from crnn.results.render import (
    caption,
    embedded_markdown,
    embedded_table,
    incomplete_section,
    jobs_csv,
    latex,
    markdown,
    rows_csv,
)

__all__ = ["TablesResult", "make_tables", "read_sources"]


@dataclass
class TablesResult:
    metric: str
    rows: list[dict[str, Any]]
    jobs: list[Job]
    markdown: str
    files: dict[str, Path]


def read_sources(
    sweeps: Sequence[str | Path] = (),
    wandb_project: str | None = None,
    wandb_group: str | None = None,
    api: Any = None,
) -> list[Job]:
    """The jobs of every sweep folder and W&B group given, each run once."""
    jobs: list[Job] = []
    for sweep in sweeps:
        jobs += read_sweep(sweep)
    if wandb_project:
        from crnn.results.wandb import read_wandb

        jobs += read_wandb(wandb_project, wandb_group, api=api)
    if not jobs:
        raise TablesError(
            "no sources: give one or more multirun folders, or --wandb ENTITY/PROJECT --group GROUP"
        )
    return dedupe(jobs)


def _scale(rows: Sequence[dict[str, Any]], requested: str = "auto") -> float:
    if requested != "auto":
        return float(requested)
    values = [r["mean"] for r in rows if r["mean"] is not None]
    return 100.0 if values and all(0.0 <= v <= 1.0 for v in values) else 1.0


def _intro(jobs: Sequence[Job], sources: str, metric: str | None, scale: float) -> str:
    if not metric:
        return f"Sources: {sources}. Profile jobs only (crnn-profile): complexity, no metric."
    train = [j for j in jobs if j.kind == "train"]
    done = sum(j.status == "completed" for j in train)
    partial = len(train) - done
    return (
        f"Sources: {sources}. Jobs: {done} completed of {len(train)} training jobs"
        + (f" (partial: {partial} not completed, see below)" if partial else "")
        + f". {caption(metric, scale)}"
    )


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
    """Read the sources, write every table and plot to ``out_dir`` (default ``<first sweep>/tables``).

    Files: ``table.md`` (the table, the embedded table when the profile jobs measured it, and the
    incomplete jobs), ``table.csv`` (raw numbers), ``table.tex`` (booktabs), ``jobs.csv`` (one line
    per job), ``embedded.csv`` (the embedded table's raw numbers, when measured) and
    ``<metric>_vs_{macs,params}.png``.
    """
    jobs = read_sources(sweeps, wandb_project, wandb_group, api)
    if out_dir is None:
        if not sweeps:
            raise TablesError("--out is needed with --wandb (there is no sweep folder to write into)")
        out_dir = Path(sweeps[0]) / "tables"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    metric = pick_metric(jobs, metric)
    rows, varying = build_rows(jobs, metric)
    factor = _scale(rows, scale)
    shown = metric if any(j.kind == "train" for j in jobs) else None  # profile sweeps: complexity only
    sources = ", ".join(str(s) for s in sweeps)
    if wandb_project:
        sources += f"{', ' if sweeps else ''}W&B {wandb_project} {wandb_group or ''}".rstrip()
    embedded = embedded_markdown(rows)
    md = "\n".join(
        [
            f"# {shown or 'Complexity'}: {len(rows)} configurations",
            "",
            _intro(jobs, sources, shown, factor),
            "",
            markdown(rows, varying, shown, factor),
            "",
            *([f"## Embedded (int8 TFLite, TensorFlow Lite Micro)\n\n{embedded}\n"] if embedded else []),
            incomplete_section(jobs, metric),
        ]
    )
    files = {name: out / file for name, file in _FILES.items()}
    if embedded:
        files["embedded_csv"] = out / "embedded.csv"
        embedded_table(rows).to_csv(files["embedded_csv"], index=False)
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


_FILES = {"markdown": "table.md", "csv": "table.csv", "latex": "table.tex", "jobs": "jobs.csv"}
