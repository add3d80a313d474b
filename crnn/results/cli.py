"""``crnn-tables``: paper-style tables and plots from finished (or running) sweeps, or a sweep's status.

    crnn-tables outputs/multirun/2026-01-01/12-00-00 [more sweep folders] [--metric test/acc1] [--out DIR]
    crnn-tables --wandb ENTITY/PROJECT --group cifar100_last_block        # online only
    crnn-tables --status outputs/multirun/2026-01-01/12-00-00             # completed / running / ...

Sources: Hydra multirun folders (every job folder's ``metrics.json`` from ``crnn-train`` and/or
``profile.json`` from ``crnn-profile``, its ``.hydra/`` config and overrides, and the sweep's
``multirun.yaml`` to know which jobs were planned), or the runs of a W&B group. Each run is
counted once (by its run id, else its real folder), whatever folders are given.

One row per configuration: jobs that differ only in ``seed`` are one row (the metric's mean, sample
std and the number of seeds), in paper order (the conv baseline ``none`` first). Test metrics are
the best checkpoint's. Nothing is dropped silently: every job not completed (``failed``,
``running``, ``interrupted``, a job folder without ``metrics.json`` = ``no-metrics``, a planned job
without a folder = ``pending``) is listed with its reason, so a running sweep gives a partial table.

``--status``: how many jobs of each sweep are completed / running / queued / failed, and the
failed ones with their message; exit code 1 when a job failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crnn.results.read import TablesError, dedupe, read_sweep
from crnn.results.render import status_counts, status_report
from crnn.results.tables import make_tables


def _status(sweeps: Sequence[str]) -> int:
    failed = 0
    for sweep in sweeps:
        jobs = dedupe(read_sweep(sweep))
        print(status_report(jobs, sweep))
        failed += status_counts(jobs)["failed"]
    return 1 if failed else 0


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
    parser.add_argument(
        "--status", action="store_true", help="print each sweep's job counts and failed jobs; write nothing"
    )
    args = parser.parse_args(argv)
    if args.status and not args.sweeps:
        parser.error("--status needs one or more sweep folders")
    if not args.sweeps and not args.wandb:
        parser.error("give one or more multirun folders, or --wandb ENTITY/PROJECT [--group GROUP]")
    try:
        if args.status:
            raise SystemExit(_status(args.sweeps))
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
