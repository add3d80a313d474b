"""Run bookkeeping shared by the entry points: labels, metrics.json, config hash, checkpoint loading,
W&B mode, config printing and the exit code of each final status."""

from __future__ import annotations

import configparser
import errno
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crnn.naming import model_name

log = logging.getLogger("crnn")

CONFIG_KEY = "crnn_config"
"""Checkpoint key holding the resolved config of the run that wrote it (see
:class:`crnn.callbacks.StoreConfig`)."""

EXIT_CODES = {"completed": 0, "failed": 1, "user_error": 2, "SIGINT": 130, "SIGTERM": 143}
"""Process exit code of each outcome: a scheduler reads the same outcome as ``metrics.json``."""

RUN_LOCATION_KEYS = ("paths", "hydra", "ckpt_path", "resume", "print_config", "tags", "finetune")
"""Top-level keys that say where and how a run is launched, not what it trains: left out of the
config hash and of the comparison with a checkpoint's config."""

NON_MODEL_LEAVES = ("root", "num_workers", "download", "verify_checksums", "pin_memory", "default_root_dir")
"""Keys that may change between launches of the same run (the data or the folder moved, another
machine): left out of the config hash and of config comparisons."""


def project_root() -> Path:
    """The folder holding ``conf/`` (the repository root for an editable install)."""
    return Path(__file__).resolve().parents[1]


def choices(cfg: DictConfig) -> dict[str, str | None]:
    """The group choices of this run (``backbone``, ``rnn``, ``head``, ``data``, ...) and ``cell``:
    what was asked for. ``crnn-train`` labels its runs with what was built instead
    (``crnn.builders.run_labels``), keeping ``data`` and ``experiment`` from here."""
    from hydra.core.hydra_config import HydraConfig

    picked = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    out = {g: picked.get(g) for g in ("data", "task", "backbone", "rnn", "head", "experiment")}
    out["cell"] = cfg.get("rnn", {}).get("cell")
    return out


def run_name(picked: Mapping[str, Any], seed: int | None, swept: Mapping[str, Any] | None = None) -> str:
    """``resnet20-sws_birnn-linear-s0``, plus ``-key=value`` for each swept setting that the group
    choices do not already name (so that every job of a sweep has its own name)."""
    name = f"{model_name(picked)}-s{seed}"
    extra = [f"{k.split('.')[-1]}={v}" for k, v in (swept or {}).items() if k not in picked and k != "seed"]
    return "-".join([name, *extra])


def git_commit() -> str | None:
    try:
        run = dict(cwd=project_root(), capture_output=True, text=True, timeout=5)
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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
        if not self.write:
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


def _without(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in keys}


def flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def plain_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """12 hex digits identifying what a run trains (its resolved config less
    :data:`RUN_LOCATION_KEYS`)."""
    content = flat(_without(plain_config(cfg), RUN_LOCATION_KEYS + ("logger", "callbacks")))
    content = {k: v for k, v in content.items() if k.split(".")[-1] not in NON_MODEL_LEAVES}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...] = RUN_LOCATION_KEYS
) -> list[str]:
    """``key: old -> new`` for each setting (dotted key) that differs, the launch keys ignored."""
    a, b = flat(_without(plain_config(old), ignore)), flat(_without(plain_config(new), ignore))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    # ``task.{backbone,rnn,head}`` repeat the top-level nodes; ``_target_``-style keys follow the choice.
    repeated = ("task.backbone.", "task.rnn.", "task.head.")
    keys = [k for k in keys if not k.startswith(repeated) and not k.split(".")[-1].startswith("_")]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if k.split(".")[-1] not in NON_MODEL_LEAVES]


def load_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """``torch.load`` of a crnn checkpoint: tensors and plain Python values only
    (``weights_only=True``), unless ``trust`` (``trust_checkpoint=true``: your own older files,
    which may run code when unpickled)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it needs {found.group(1)}" if found else (str(err).strip().splitlines() or ["?"])[0][:200]
        raise CheckpointError(
            f"{path}: holds more than tensors and plain values, so it is not loaded ({what}). "
            "If you wrote it yourself, pass trust_checkpoint=true."
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely, or that does not fit the model."""


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


def save_config(cfg: DictConfig, path: Path) -> None:
    """Save the resolved config (rank 0); every run does, printed or not."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, path, resolve=True)


def print_config(cfg: DictConfig, path: Path | None = None) -> None:
    """Print the composed config as a tree (rank 0), never cut (long paths in a log file
    included), and save it resolved to ``path``."""
    from lightning.pytorch.utilities import rank_zero_only

    if path is not None:
        save_config(cfg, path)
    if rank_zero_only.rank != 0:
        return
    import rich.console
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(
            rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True)
        )
    # Outside a terminal rich would wrap at 80 columns and cut long lines: print them whole.
    width = None if sys.stdout.isatty() else 10_000
    rich.console.Console(width=width, soft_wrap=not sys.stdout.isatty()).print(tree)


def hydra_job() -> dict[str, Any]:
    """This job's Hydra facts: ``multirun``, ``sweep_dir``, ``swept`` (the sweep's keys with this job's
    values) and ``overrides``; empty outside a Hydra app."""
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
    try:
        sweep = OmegaConf.load(Path(hc.sweep.dir) / "multirun.yaml")
        return {o.split("=", 1)[0].lstrip("+~") for o in sweep.hydra.overrides.task if "," in o}
    except Exception:  # no multirun.yaml (single run, or not written yet)
        return set()


def run_name_and_tags(cfg: DictConfig, labels: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The run's name and tags: the labels of what was built (``crnn.builders.run_labels`` plus
    ``data`` and ``experiment``), the seed and each swept setting, so that every job of a sweep is
    told apart (``-rf_layer=conv3``)."""
    swept = {k.split("/")[-1]: v for k, v in hydra_job().get("swept", {}).items()}
    swept = {k: v for k, v in swept.items() if v not in labels.values()}
    name = run_name(labels, cfg.get("seed"), swept)
    tags = [v for k, v in labels.items() if v and k != "task"] + [f"{k}={v}" for k, v in swept.items()]
    return name, tags + list(cfg.get("tags") or [])


def sweep_group(picked: Mapping[str, Any]) -> str | None:
    """W&B group: a sweep's is the experiment's name (or ``sweep``) plus a short id of its folder (a
    re-launched sweep keeps its group, two launches of one preset are two groups); a single run's is
    its experiment's name."""
    job = hydra_job()
    if not job.get("multirun"):
        return picked.get("experiment")
    sweep_id = hashlib.sha1(str(Path(job["sweep_dir"]).resolve()).encode()).hexdigest()[:6]
    return f"{picked.get('experiment') or 'sweep'}-{sweep_id}"


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


def check_state_fits(own: Mapping[str, Any], state: Mapping[str, Any], source: str) -> None:
    """One :class:`CheckpointError` naming the parameters whose names or shapes differ between a
    model's ``state_dict`` (``own``) and a checkpoint's (``state``); ``source`` says where the
    model's config came from."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    parts = [
        f"{label} {', '.join(keys[:3])}{f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''}"
        for label, keys in (("shape differs:", shapes), ("missing:", missing), ("unexpected:", unexpected))
        if keys
    ]
    if parts:
        raise CheckpointError(
            f"the checkpoint does not fit the model built from {source}: {'; '.join(parts)}"
        )


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
