"""What a sweep folder holds: one row per job (status, error) read from its record file:
``metrics.json`` (crnn-train) or ``profile.json`` (crnn-profile), both with ``status``.

A job folder is a folder of the sweep holding Hydra's ``.hydra/`` (written before the task starts)
or a record; one without a record stopped before its task began (``status: missing``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FINISHED_OK = ("completed",)
RECORDS = ("metrics.json", "profile.json")


@dataclass(frozen=True)
class JobRecord:
    folder: Path
    status: str  # completed | failed | running | interrupted | missing | ...
    error: str | None = None  # "<error type>: <one-line message>" for a failed job

    @property
    def failed(self) -> bool:
        return self.status not in FINISHED_OK


def _error_line(metrics: dict) -> str | None:
    kind = metrics.get("error_type")
    message = metrics.get("error_message") or metrics.get("error")
    if not (kind or message):
        return None
    return ": ".join(str(part) for part in (kind, message) if part)


def job_folders(sweep_dir: Path) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    patterns = ("*/.hydra", *(f"*/{name}" for name in RECORDS))
    found = {p.parent for pattern in patterns for p in sweep_dir.glob(pattern)}
    return sorted(found, key=lambda p: (len(p.name.split("_", 1)[0]), p.name))


def read_jobs(sweep_dir: Path) -> list[JobRecord]:
    records = []
    for folder in job_folders(sweep_dir):
        path = next((folder / name for name in RECORDS if (folder / name).is_file()), None)
        if path is None:
            records.append(JobRecord(folder, "missing", f"no {' or '.join(RECORDS)}: the job stopped early"))
            continue
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            records.append(JobRecord(folder, "unreadable", f"{path}: {err}"))
            continue
        records.append(JobRecord(folder, str(metrics.get("status", "unknown")), _error_line(metrics)))
    return records


def format_summary(records: list[JobRecord]) -> str:
    """``4 jobs: 3 completed, 1 failed`` and one line per job that did not complete."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    head = f"{len(records)} jobs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [head]
    for record in records:
        if record.failed:
            lines.append(f"  {record.status:<11} {record.folder.name}: {record.error or '-'}")
    return "\n".join(lines)
