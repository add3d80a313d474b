"""The clock of the benchmark scripts (``--clock``), one definition for all of them.

``wall`` (default): ``time.perf_counter``, the number to report. ``cpu``: ``time.process_time``, the
CPU seconds of this process: steadier on a shared machine, meaningful on the CPU with one thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: perf_counter (the number to report); cpu: process CPU time, steadier on a shared "
        "machine (CPU, 1 thread)",
    )
