"""The process an entry point runs in: the project root, this Hydra job, the git commit, W&B's mode,
progress bars, the warnings every run would repeat and how freed memory is kept."""

from __future__ import annotations

import configparser
import ctypes
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = [
    "git_commit",
    "hydra_job",
    "keep_freed_memory",
    "progress_bar_enabled",
    "project_root",
    "quiet_known_noise",
    "wandb_mode",
]


def project_root() -> Path:
    """The folder holding ``conf/`` (the repository root for an editable install)."""
    return Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    try:
        run = dict(cwd=project_root(), capture_output=True, text=True, timeout=5)
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hydra_job() -> dict[str, Any]:
    """This job's Hydra facts: ``multirun``, ``sweep_dir``, ``sweep_params`` (the sweeper's own
    ``params`` keys), ``swept`` (the sweep's keys with this job's values) and ``overrides``; empty
    outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    overrides = dict(o.split("=", 1) for o in hc.overrides.task if "=" in o)
    overrides = {k.lstrip("+~"): v for k, v in overrides.items()}
    params = [k.lstrip("+~") for k in (hc.sweeper.get("params") or {})]
    swept = {k: overrides[k] for k in params if k in overrides}
    swept.update({k: v for k, v in overrides.items() if k in _command_line_sweeps(hc)})
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "multirun": multirun,
        "sweep_dir": hc.sweep.dir if multirun else None,
        "sweep_params": params,
        "swept": swept,
        "overrides": overrides,
    }


def _command_line_sweeps(hc: Any) -> set[str]:
    """Keys swept on the command line (``rnn=none,srnn``): Hydra keeps the sweep's own overrides in
    ``hydra.overrides.hydra`` only as ``hydra.*``; the job knows its own task overrides, so the keys
    whose value differs across jobs come from the sweep's ``multirun.yaml`` when it is there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        sweep = OmegaConf.load(Path(hc.sweep.dir) / "multirun.yaml")
        parsed = OverridesParser.create().parse_overrides(list(sweep.hydra.overrides.task))
    except Exception:  # no multirun.yaml (single run, or not written yet)
        return set()
    # Hydra's own parser: `a,b`, range(...), glob(...) sweep; a list value `tags=[a,b]` does not
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def _wandb_settings_mode() -> str | None:
    """``mode`` from W&B's own settings files (``wandb offline`` / ``wandb disabled`` write it):
    the workspace ``./wandb/settings``, then ``$WANDB_CONFIG_DIR/settings`` (``~/.config/wandb``)."""
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    for path in (Path(os.environ.get("WANDB_DIR", ".")) / "wandb" / "settings", config_dir / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        if parser.has_option("default", "mode"):
            return parser.get("default", "mode")
        if parser.has_option("default", "disabled") and parser.getboolean("default", "disabled"):
            return "disabled"
    return None


def wandb_mode(requested: str | None) -> str:
    """``requested`` if set; else ``WANDB_MODE``; else W&B's own settings (``wandb offline``);
    else online with credentials, offline without.

    Credentials are ``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host, which is what
    ``wandb login`` writes; without them W&B would prompt, so we go offline instead.
    """
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode := _wandb_settings_mode():
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


def progress_bar_enabled(requested: bool | None) -> bool:
    """Bars on an interactive terminal only: not in a log file, a pipe or CI."""
    if requested is not None:
        return bool(requested)
    return sys.stderr.isatty() and not os.environ.get("CI")


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_known_noise() -> None:
    """Silence what every run repeats and crnn knows does not apply; ``CRNN_SHOW_ALL_WARNINGS=1``
    shows it all again.

    - Lightning's hint to run under ``srun`` (only when not inside a SLURM job);
    - the ``LeafSpec`` deprecation between torch and Lightning versions (nothing a user can change);
    - Hydra's note that a launcher config is validated against the plugin's schema of the same name;
    - Lightning's adverts (LitLogger / litmodels tips) and its note on estimating stepping batches.
    """
    import warnings

    if os.environ.get("CRNN_SHOW_ALL_WARNINGS"):
        return
    if not os.environ.get("SLURM_JOB_ID"):
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # conf/hydra/launcher/submitit_*.yaml keep only crnn's differences from the plugin's schema of the
    # same name (so that `hydra/launcher=submitit_slurm` stays the plugin's name); Hydra calls that
    # matching deprecated on every launch, and the alternative is a second name for each launcher.
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same")
    noise = _DropMessages("💡 Tip:", "litmodels", "to estimate number of stepping batches")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(noise)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse: blocks up to 32 MiB come from the heap (not
    each from its own mmap) and up to 512 MiB of freed heap stays mapped, as
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=536870912`` would.

    Why: a training step frees and allocates the same MB-sized tensors every step; by default glibc
    hands them back to the OS and the next step page-faults them in again, 4 KiB at a time. An FCOS
    training step with ``sws_birnn`` towers took ~5,200 minor page faults (``none``: 1) and ran at
    1.26x ``none``'s time; with this, ~380 and 1.06x (1 thread, ``synthetic_shapes``). The price: the
    process keeps its peak heap (it is reused, not grown). Linux with glibc only; left alone when
    either variable is set (the user's choice). Returns whether it applied.
    """
    if sys.platform != "linux" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 512 << 20))
