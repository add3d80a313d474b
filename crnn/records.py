"""What a run writes as JSON: strict JSON written atomically, the run's ``metrics.json``
(:class:`MetricsFile`) and the end-of-run summary read from it."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("crnn")

__all__ = ["MetricsFile", "end_table", "strict_json", "write_json_atomic"]


def strict_json(data: Any) -> tuple[Any, list[str]]:
    """``data`` with every non-finite float replaced by ``None``, and the keys that held one."""
    bad: list[str] = []

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(key)
            return None
        if isinstance(value, Mapping):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    return clean(data, ""), bad


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write strict JSON (no ``NaN``) so that a reader never sees a half-written file (temp file +
    rename), readable by everyone (0644); ``indent=None`` for large machine-read files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent, sort_keys=indent is not None, default=str, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MetricsFile:
    """``metrics.json`` of a run folder: one dict, updated and rewritten atomically.

    Non-finite numbers are written as ``null`` and listed under ``non_finite``. When the disk is
    full, :meth:`update` still records ``status``/``reason``/``error`` by overwriting the existing file
    in place with a shorter document (no new disk blocks), keeping the original error.
    ``write=False`` (DDP ranks other than 0) keeps the values in :attr:`data` and writes nothing.
    """

    def __init__(self, path: Path, write: bool = True):
        self.path, self.write = Path(path), write
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def update(self, **values: Any) -> None:
        self.data.update(values)
        if not self.write or not values:  # nothing new: the file is as it was
            return
        data, bad = strict_json({k: v for k, v in self.data.items() if k != "non_finite"})
        if bad:
            data["non_finite"] = sorted(bad)
        try:
            write_json_atomic(self.path, data)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or "status" not in values:
                raise
            self._write_in_place(data, err)

    def _write_in_place(self, data: dict[str, Any], err: OSError) -> None:
        keep = ("status", "reason", "error", "error_type", "name", "run_dir", "config_hash")
        short = {k: data[k] for k in keep if k in data}
        short["error"] = f"{short.get('error') or ''} (metrics.json cut short: {err.strerror})".strip()
        text = json.dumps(short, sort_keys=True) + "\n"
        with open(self.path, "r+") as f:  # overwrites existing blocks: works on a full disk
            f.write(text)
            f.truncate()
        log.error("disk full: %s holds only %s", self.path, ", ".join(short))


def end_table(metrics: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The end-of-run summary: each metric last (``val``), best (``val best``, at ``best_epoch``)
    and on the test split, then status and run folder."""
    from tabulate import tabulate

    best = metrics.get("best") or {}
    names = sorted(
        {k.split("/", 1)[1] for k in metrics if k.startswith(("val/", "test/")) and "_best" not in k}
    )
    rows = []
    for name in names:
        cells = [metrics.get(f"val/{name}"), best.get(f"val/{name}"), metrics.get(f"test/{name}")]
        if any(isinstance(c, (int, float)) for c in cells):
            rows.append([name, *("" if c is None else c for c in cells)])
    headers = [
        "metric",
        f"val (last, epoch {metrics.get('last_epoch')})",
        f"val (best, epoch {best.get('epoch')})",
        f"test (epoch {metrics.get('test_epoch')})",
    ]
    lines = tabulate(rows, headers=headers, floatfmt=".4f").splitlines() if rows else []
    status = metrics.get("status")
    reason = f" ({metrics.get('reason')}: {metrics.get('error')})" if status != "completed" else ""
    return [*lines, f"status {status}{reason}; run folder {run_dir}"]
