"""``crnn-train``: compose backbone + rnn + head + data from ``conf/`` and train (Hydra app).

crnn-train backbone=resnet20 rnn=sws_birnn head=linear
crnn-train -m rnn=none,srnn,sws_birnn seed=0,1
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from crnn import complexity
from crnn.builders import build_datamodule, build_task
from crnn.errors import USER_ERRORS, ConfigError
from crnn.runtime import (
    MetricsFile,
    StoreConfig,
    choices,
    git_commit,
    print_config,
    progress_bar_enabled,
    project_root,
    run_name,
    wandb_mode,
)

log = logging.getLogger("crnn.train")

CONF_DIR = project_root() / "conf"
"""Absolute, so that Hydra finds it from a console script run in any folder."""


def resolve_resume(cfg: DictConfig, output_dir: Path) -> tuple[Path | None, Path]:
    """The checkpoint to resume from and the run folder to write to.

    ``ckpt_path=<run>/checkpoints/last.ckpt`` continues that run in its own folder (same
    metrics.json, checkpoints and W&B run). With ``resume=true``, a run folder that already holds
    ``checkpoints/last.ckpt`` (``hydra.run.dir=<run>``, or a re-launched sweep with the same
    ``hydra.sweep.dir``) continues from it.
    """
    if cfg.ckpt_path:
        ckpt = Path(cfg.ckpt_path).expanduser().resolve()
        if not ckpt.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else output_dir
        return ckpt, run_dir
    last = output_dir / "checkpoints" / "last.ckpt"
    return (last if cfg.resume and last.is_file() else None), output_dir


def build_loggers(
    cfg: DictConfig, name: str, group: str | None, tags: list[str], resume_id: str | None
) -> list:
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if key == "wandb":
            mode = wandb_mode(node.get("mode"))
            loggers.append(
                instantiate(
                    node,
                    mode=mode,
                    name=name,
                    group=node.get("group") or group,
                    tags=tags,
                    id=resume_id,
                    resume="allow" if resume_id else None,
                )
            )
        else:
            loggers.append(instantiate(node))
    return loggers


def build_callbacks(cfg: DictConfig, picked: dict, has_logger: bool) -> list[L.Callback]:
    callbacks = [StoreConfig(cfg, picked)]
    for node in (cfg.get("callbacks") or {}).values():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if node._target_.endswith("LearningRateMonitor") and not has_logger:
            continue  # it refuses to run without a logger
        callbacks.append(instantiate(node))
    return callbacks


def _sweep_group() -> str | None:
    """For a multirun job, the sweep folder's name (so one sweep is one W&B group)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return "sweep-" + Path(hc.sweep.dir).as_posix().rstrip("/").replace("/", "_")[-40:]
    return None


def _number(value: Any) -> float | int | Any:
    return value.item() if hasattr(value, "item") else value


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the content of its ``metrics.json``."""
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path, run_dir = resolve_resume(cfg, output_dir)
    if run_dir != output_dir:
        log.info("Resuming the run in %s", run_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    metrics = MetricsFile(run_dir / "metrics.json")
    if (
        cfg.resume
        and ckpt_path is not None
        and metrics.data.get("status") == "completed"
        and not cfg.ckpt_path
    ):
        log.info("%s holds a completed run: skipped (resume=false to train again)", run_dir)
        return metrics.data

    if cfg.get("print_config"):
        print_config(cfg, run_dir / "config.yaml")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    picked = choices(cfg)
    name = run_name(picked, cfg.get("seed"))
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    module, inputs = task.complexity_inputs()
    params, macs = complexity.count_params(module), complexity.count_macs(module, *inputs)
    log.info("%s: %s params, %s MACs at input %s", name, f"{params:,}", f"{macs:,}", tuple(inputs[0].shape))

    tags = [v for k, v in picked.items() if v and k != "task"] + list(cfg.get("tags") or [])
    group = picked.get("experiment") or _sweep_group()
    loggers = build_loggers(cfg, name, group, tags, metrics.data.get("wandb_id"))
    summary = {"params": params, "macs": macs}
    for logger in loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **summary, "choices": picked})
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
            logger.experiment.summary.update(summary)  # W&B: params and MACs in the run summary
    wandb_id = next((lg.version for lg in loggers if type(lg).__name__ == "WandbLogger"), None)

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["enable_progress_bar"] = progress_bar_enabled(trainer_cfg.get("enable_progress_bar"))
    callbacks = build_callbacks(cfg, picked, bool(loggers))
    # Without a configured ModelCheckpoint (callbacks=none), write no checkpoints at all.
    trainer_cfg["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer: L.Trainer = instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks)

    metrics.update(
        status="running",
        name=name,
        **picked,
        seed=cfg.get("seed"),
        params=params,
        macs=macs,
        input_shape=list(inputs[0].shape[1:]),
        git_commit=git_commit(),
        wandb_id=wandb_id,
        run_dir=str(run_dir),
    )
    start, status = time.time(), "failed"
    previous_wall = float(metrics.data.get("wall_time_s") or 0.0)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        # The last epoch's evaluation metrics and training throughput (curves are in the logger).
        results = {
            k: _number(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("val/", "test/")) or k in ("train/images_per_s", "train/epoch_time_s")
        }
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_score is not None:
            results[task.monitor] = _number(checkpoint.best_model_score)
            results["best_ckpt"] = checkpoint.best_model_path
        if cfg.get("test_after_fit") and not trainer.interrupted and not trainer.fast_dev_run:
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            for out in trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False):
                results.update({k: _number(v) for k, v in out.items()})
        status = "interrupted" if trainer.interrupted else "completed"
        metrics.update(**results)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        metrics.update(status=status, wall_time_s=round(previous_wall + time.time() - start, 2))
        for logger in loggers:
            if type(logger).__name__ == "WandbLogger":
                for key in [k for k in metrics.data if k.startswith(("val/", "test/"))]:
                    logger.experiment.summary[key] = metrics.data[key]
                logger.experiment.finish()  # each multirun job is its own W&B run
    log.info("metrics.json: %s", metrics.path)
    return metrics.data


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    monitor = cfg.task.get("monitor")
    return result.get(monitor) if monitor else None  # for Hydra sweepers that optimise


def main() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(project_root()))
    _main()


if __name__ == "__main__":
    main()
