"""A run's resolved config: saved and printed, hashed (what a run trains) and compared with another
run's (which settings differ), the keys that say where a run is launched left out."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "NON_MODEL_LEAVES",
    "RUN_LOCATION_KEYS",
    "config_diff",
    "config_hash",
    "flat",
    "plain_config",
    "print_config",
    "save_config",
]


RUN_LOCATION_KEYS = ("paths", "hydra", "ckpt_path", "resume", "print_config", "tags", "finetune")
"""Top-level keys that say where and how a run is launched, not what it trains: left out of the
config hash and of the comparison with a checkpoint's config."""


NON_MODEL_LEAVES = (
    "root",
    "num_workers",
    "download",
    "verify_checksums",
    "pin_memory",
    "default_root_dir",
    "fused",
)
"""Keys that may change between launches of the same run (the data or the folder moved, another
machine; ``task.optimizer.fused``, the same step to float rounding, follows ``trainer``, which a resumed
run may change): left out of the config hash and of config comparisons."""


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
