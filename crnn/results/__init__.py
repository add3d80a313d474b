"""crnn.results: sweeps and W&B groups to paper tables and plots.

``read`` (job folders and sweeps to :class:`Job` records, each run once), ``wandb`` (W&B runs),
``aggregate`` (pandas: one row per configuration, seeds pooled), ``render`` (Markdown, LaTeX, CSV,
status summary, per-job complexity table), ``plot`` (accuracy vs cost), ``tables``
(:func:`make_tables`: everything into one folder) and ``cli`` (``crnn-tables``).
"""

from crnn.results.aggregate import build_rows, pick_metric
from crnn.results.plot import pareto_front
from crnn.results.read import Job, TablesError, dedupe, metric_value, read_job, read_sweep
from crnn.results.render import profile_markdown, status_counts, status_report
from crnn.results.tables import TablesResult, make_tables, read_sources
from crnn.results.wandb import read_wandb

__all__ = [
    "Job",
    "TablesError",
    "TablesResult",
    "build_rows",
    "dedupe",
    "make_tables",
    "metric_value",
    "pareto_front",
    "pick_metric",
    "profile_markdown",
    "read_job",
    "read_sources",
    "read_sweep",
    "read_wandb",
    "status_counts",
    "status_report",
]
