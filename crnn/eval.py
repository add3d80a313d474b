"""``crnn-eval``: evaluate a checkpoint on the validation (and test) split (Hydra app, ``conf/eval.yaml``).

    crnn-eval ckpt_path=outputs/runs/.../checkpoints/best.ckpt [data.root=... trainer.accelerator=cpu]

The checkpoint carries its run's resolved config (:class:`crnn.callbacks.StoreConfig`); the
command line may change ``data.*``, ``trainer.*``, ``test_after_fit`` and the logger, not the model.
Results go to ``<run>/eval/<time>/metrics.json``. Exit codes, as crnn-train's: 0 completed, 1 failed, 2 bad
input, 130 Ctrl-C, 143 SIGTERM (both stop at the next batch).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from crnn import complexity
from crnn.builders import MODEL_NODES, build_datamodule, build_group, checkpoint_run_dir, task_from_checkpoint
from crnn.checkpoints import CONFIG_KEY
from crnn.errors import USER_ERRORS, ConfigError
from crnn.lifecycle import EXIT_CODES, RunStopped, graceful_interrupts, outcome_of
from crnn.loggers import finish_loggers
from crnn.records import MetricsFile
from crnn.run_config import flat
from crnn.runtime import git_commit, keep_freed_memory, progress_bar_enabled, project_root, quiet_known_noise

log = logging.getLogger("crnn.eval")

EVAL_KEYS = ("data", "trainer", "test_after_fit", "logger", "seed")
"""Settings the command line may change for an evaluation."""


def eval_dir(ckpt_path: str, stamp: str) -> str:
    """``<run>/eval/<stamp>`` for ``<run>/checkpoints/<x>.ckpt``, else ``<folder of x>/eval/<stamp>``."""
    return str(checkpoint_run_dir(ckpt_path) / "eval" / stamp)


OmegaConf.register_new_resolver("crnn_eval_dir", eval_dir, replace=True)


def merged_config(stored: Mapping[str, Any], overrides: Mapping[str, Any], ckpt_path: Path) -> DictConfig:
    """The checkpoint's config with the command line's evaluation settings (dotted keys) applied.

    Raises :class:`ConfigError` when a model setting on the command line differs from the checkpoint's,
    or when a setting is neither a model nor an evaluation setting (it would be ignored).
    """
    cfg = OmegaConf.create(dict(stored))
    conflicts, ignored = [], []
    for key, value in overrides.items():
        top = key.split(".")[0]
        if top in MODEL_NODES:
            now = OmegaConf.select(cfg, key)
            if OmegaConf.is_config(now):
                now = OmegaConf.to_container(now, resolve=True)
            if now != value:
                conflicts.append(f"{key}={value!r} (checkpoint: {now!r})")
        elif top in EVAL_KEYS:
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        else:
            ignored.append(key)
    if conflicts:
        raise ConfigError(
            f"model settings on the command line differ from the checkpoint's config ({CONFIG_KEY} in "
            f"{ckpt_path}): {'; '.join(conflicts)}. The model is rebuilt from the checkpoint: drop them."
        )
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)}: not an evaluation setting (crnn-eval takes {', '.join(EVAL_KEYS)}; "
            "the rest comes from the checkpoint): drop them."
        )
    return cfg


def build_eval_loggers(cfg: DictConfig, ckpt_path: Path, run_dir: Path) -> list:
    """The configured loggers; W&B's run is named and grouped after the training run's
    (``<name>-eval``, same group, else the training run's id), job type ``eval``."""
    trained = MetricsFile(run_dir / "metrics.json").data if (run_dir / "metrics.json").is_file() else {}

    def wandb_run(key: str, node: Mapping[str, Any]) -> dict[str, Any]:
        if key != "wandb":
            return {}
        name, group = trained.get("name") or ckpt_path.stem, trained.get("group") or trained.get("wandb_id")
        return {"name": f"{name}-eval", "job_type": "eval", "group": node.get("group") or group}

    return build_group(cfg.get("logger"), wandb_run)


def evaluate(
    ckpt_path: str | Path,
    overrides: Mapping[str, Any] | list[str] | None = None,
    output_dir: str | Path | None = None,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Evaluate ``ckpt_path``; returns the metrics written to ``<output_dir>/metrics.json``, or raises
    :class:`~crnn.lifecycle.RunStopped` when the evaluation failed or was interrupted (Ctrl-C, SIGTERM:
    it stops at the next batch), which ``metrics.json`` records as crnn-train's runs do.

    ``overrides``: ``{"trainer.limit_val_batches": 2}`` or ``["trainer.limit_val_batches=2"]``.
    """
    if isinstance(overrides, list):
        overrides = flat(OmegaConf.to_container(OmegaConf.from_dotlist(overrides)))
    loaded = task_from_checkpoint(ckpt_path, trust=trust_checkpoint)
    ckpt_path, task = loaded.path, loaded.task
    cfg = merged_config(OmegaConf.to_container(loaded.config), overrides or {}, ckpt_path)
    out = (
        Path(output_dir) if output_dir else Path(eval_dir(str(ckpt_path), time.strftime("%Y-%m-%d_%H-%M-%S")))
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    datamodule = build_datamodule(cfg)
    module, inputs = task.complexity_inputs()
    metrics = MetricsFile(out / "metrics.json")
    metrics.update(
        status="running",
        **loaded.choices,
        seed=cfg.get("seed"),
        ckpt_path=str(ckpt_path),
        ckpt_epoch=loaded.epoch,
        params=complexity.count_params(module),
        macs=complexity.count_macs(module, *inputs),
        git_commit=git_commit(),
    )
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(
        devices=1,
        default_root_dir=str(out),
        enable_checkpointing=False,
        enable_progress_bar=progress_bar_enabled(trainer_cfg.get("enable_progress_bar")),
    )
    for key in ("strategy", "sync_batchnorm", "max_epochs", "min_epochs"):
        trainer_cfg.pop(key, None)
    loggers = build_eval_loggers(cfg, ckpt_path, loaded.run_dir)
    trainer: L.Trainer = instantiate(trainer_cfg, logger=loggers or False, callbacks=[])
    start, results = time.time(), {}
    received: dict[str, str] = {}
    try:
        with graceful_interrupts(trainer) as received:
            for out_metrics in trainer.validate(task, datamodule=datamodule, verbose=False):
                results.update({k: float(v) for k, v in out_metrics.items()})
            if cfg.get("test_after_fit"):
                for out_metrics in trainer.test(task, datamodule=datamodule, verbose=False):
                    results.update({k: float(v) for k, v in out_metrics.items()})
        outcome = outcome_of(None, received, out)
    except BaseException as err:  # every ending is recorded; KeyboardInterrupt and SystemExit included
        outcome = outcome_of(err, received, out)
    metrics.update(**results, **outcome, wall_time_s=round(time.time() - start, 2))
    metrics.update(**finish_loggers(loggers, outcome["exit_code"]))
    log.info("metrics.json: %s", metrics.path)
    if metrics.data["status"] != "completed":
        raise RunStopped(metrics.data, outcome["exit_code"])
    return metrics.data


def command_line_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The evaluation's command-line settings as ``{dotted key: value}``: a group choice
    (``trainer=cpu``) brings its whole node."""
    from hydra.core.hydra_config import HydraConfig

    out: dict[str, Any] = {}
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("ckpt_path", "trust_checkpoint", "print_config") or key.startswith("hydra"):
            continue
        value = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


@hydra.main(version_base="1.3", config_path=str(project_root() / "conf"), config_name="eval")
def _main(cfg: DictConfig) -> None:
    keep_freed_memory()  # here: a sweep's worker process (submitit, joblib) runs _main, not main
    try:
        results = evaluate(
            cfg.ckpt_path,
            command_line_overrides(cfg),
            output_dir=cfg.paths.output_dir,
            trust_checkpoint=bool(cfg.get("trust_checkpoint")),
        )
    except USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(EXIT_CODES["user_error"]) from None
    except RunStopped as stop:
        log.error(
            "%s: %s", stop.metrics.get("status"), stop.metrics.get("error") or stop.metrics.get("reason")
        )
        raise SystemExit(stop.exit_code) from None
    for key in sorted(results):
        if key.startswith(("val/", "test/")):
            print(f"{key:>12s}  {results[key]:.4f}")


def main() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(project_root()))
    quiet_known_noise()
    _main()


if __name__ == "__main__":
    main()
