"""``crnn-train``: compose backbone + rnn + head + data from ``conf/`` and train (Hydra app).

crnn-train backbone=resnet20 rnn=sws_birnn head=linear
crnn-train -m rnn=none,srnn,sws_birnn seed=0,1

Exit codes (always matching ``metrics.json``'s status): 0 completed, 1 failed, 2 bad config or
input, 130 interrupted by Ctrl-C, 143 by SIGTERM, 140 by the USR2 before which submitit requeues a SLURM
job.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from crnn import complexity
from crnn.builders import build_datamodule, build_group, build_task, run_labels
from crnn.callbacks import GlobalRngState, NonFiniteGuard, RunRecord, StoreConfig
from crnn.callbacks.record import logger_config
from crnn.checkpoints import check_state_fits, load_checkpoint
from crnn.errors import USER_ERRORS, ConfigError
from crnn.lifecycle import EXIT_CODES, JobFailed, RunStopped, graceful_interrupts, outcome_of
from crnn.loggers import finish_loggers
from crnn.naming import choices, run_name_and_tags, sweep_group
from crnn.records import MetricsFile, end_table
from crnn.run_config import config_hash, print_config, save_config
from crnn.runfolder import (
    Launch,
    check_relaunch,
    keep_hydra_files,
    move_log_to,
    plan_launch,
    restore_hydra_files,
)
from crnn.runtime import (
    git_commit,
    hydra_job,
    keep_freed_memory,
    progress_bar_enabled,
    project_root,
    quiet_known_noise,
)
from crnn.sweeps.cluster import lightning_plugins, slurm_info

log = logging.getLogger("crnn.train")

CONF_DIR = project_root() / "conf"
"""Absolute, so that Hydra finds it from a console script run in any folder."""


def build_loggers(
    cfg: DictConfig, name: str, group: str | None, tags: list[str], resume_id: str | None
) -> list:
    """Every node of ``cfg.logger``; W&B gets the run's name, group, tags and (resuming) id."""

    def wandb_run(key: str, node: Mapping[str, Any]) -> dict[str, Any]:
        if key != "wandb":
            return {}
        # The id is chosen here so that metrics.json holds it before W&B starts (resume reuses it).
        run_id = resume_id or "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)
        )
        return dict(name=name, group=node.get("group") or group, tags=tags, id=run_id)

    return build_group(cfg.get("logger"), wandb_run)


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """Every node of ``cfg.callbacks`` (LearningRateMonitor only with a logger: it refuses without)."""
    return build_group(
        cfg.get("callbacks"),
        keep=lambda node: has_logger or not node["_target_"].endswith("LearningRateMonitor"),
    )


def check_data(datamodule: L.LightningDataModule) -> None:
    """Open and check every data file (train, val, test) before the first step (set-up is idempotent,
    so Lightning's own calls reuse it) and before any logger starts a run."""
    datamodule.prepare_data()
    datamodule.setup(None)


def load_weights(task: L.LightningModule, ckpt: Path, trust: bool) -> None:
    """``finetune=true``: the checkpoint's weights into this run's model (one line when they differ)."""
    state = load_checkpoint(ckpt, trust=trust).get("state_dict", {})
    check_state_fits(task.state_dict(), state, f"this run's config (finetune from {ckpt})")
    task.load_state_dict(state)


def sync_batchnorm(trainer_cfg: dict[str, Any]) -> bool:
    """``trainer.sync_batchnorm``; ``null`` (``trainer=ddp``): on when training on GPUs, off on CPU
    (Lightning's SyncBatchNorm runs on GPUs only; each CPU rank then normalises its own batch)."""
    requested = trainer_cfg.get("sync_batchnorm")
    if requested is not None:
        return bool(requested)
    import torch

    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_ddp_launch(trainer: L.Trainer, multirun: bool) -> None:
    """Refuse, in one line, a ``-m`` sweep job whose DDP ranks Lightning would start itself: it runs
    the command line again for each rank (with ``hydra.run.dir``), which in a sweep is the whole
    sweep. Ranks started by SLURM (``srun``), ``torchrun`` or a single run are fine."""
    strategy = trainer.strategy
    launcher = getattr(strategy, "launcher", None)
    environment = getattr(strategy, "cluster_environment", None)
    if (
        multirun
        and type(launcher).__name__ == "_SubprocessScriptLauncher"
        and getattr(launcher, "num_processes", 1) > 1
        and environment is not None
        and not environment.creates_processes_externally
    ):
        raise ConfigError(
            f"trainer.strategy={type(strategy).__name__} with {launcher.num_processes} processes inside a "
            "-m sweep: Lightning would start the other ranks by running the whole sweep again. Run DDP "
            "jobs as single runs, or through hydra/launcher=submitit_slurm with "
            "hydra.launcher.tasks_per_node=<devices> (SLURM starts the ranks)"
        )


def fit_and_test(
    cfg: DictConfig, trainer: L.Trainer, task, datamodule, launch: Launch, record: RunRecord
) -> dict:
    trust = bool(cfg.get("trust_checkpoint"))
    trainer.fit(task, datamodule=datamodule, ckpt_path=launch.resume_from, weights_only=not trust)
    results: dict[str, Any] = {}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        results["best_ckpt"] = checkpoint.best_model_path
    if cfg.get("test_after_fit") and not trainer.fast_dev_run and not trainer.interrupted:
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        for out in trainer.test(
            task, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
        ):
            results.update({k: float(v) for k, v in out.items()})
        results["test_epoch"] = record.best.get("epoch") if best else record.last_epoch
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the content of its ``metrics.json`` when it completed, raises
    :class:`RunStopped` (failed, interrupted) or a user error (bad config or input) otherwise.

    Under DDP every rank runs this (Lightning's launcher starts the Hydra app again for each local
    rank; ``srun`` starts one task per rank): only rank 0 writes the run folder's files
    (``metrics.json``, ``config.yaml``, ``error.txt``, W&B through Lightning's rank-zero experiment).
    """
    writer = rank_zero_only.rank == 0  # from RANK / LOCAL_RANK / SLURM_PROCID, before any trainer
    output_dir = Path(cfg.paths.output_dir)
    launch = plan_launch(cfg, output_dir)
    run_dir = launch.run_dir
    if run_dir != output_dir:
        log.info("Resuming the run in %s", run_dir)
        move_log_to(run_dir, output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    metrics = MetricsFile(run_dir / "metrics.json", write=writer)
    completed = metrics.data.get("status") == "completed"
    diff = check_relaunch(cfg, launch, completed)
    if diff:
        if writer:
            restore_hydra_files(run_dir)
        raise ConfigError(
            f"{run_dir} holds a {'completed' if completed else 'started'} run with another config "
            f"({'; '.join(diff[:8])}{'; ...' if len(diff) > 8 else ''}): launch it elsewhere "
            "(another hydra.run.dir / hydra.sweep.dir)"
        )
    if completed and launch.resume_from is not None and not cfg.get("ckpt_path"):
        log.info("%s holds this completed run: skipped (resume=false trains it again)", run_dir)
        return metrics.data
    if writer:
        keep_hydra_files(run_dir)
    (print_config if cfg.get("print_config") else save_config)(cfg, run_dir / "config.yaml")

    start, previous_wall = time.time(), float(metrics.data.get("wall_time_s") or 0.0)
    loggers: list = []
    received: dict[str, str] = {}
    try:
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True, verbose=False)
        requested = choices(cfg)
        # Known before the model is built; the model's own labels follow once it is (a failure
        # before that leaves them out, and readers fall back to the group choices).
        labels = {k: requested.get(k) for k in ("data", "experiment")}
        metrics.update(
            status="starting",
            **labels,
            seed=cfg.get("seed"),
            run_dir=str(run_dir),
            config_hash=config_hash(cfg),
            git_commit=git_commit(),
            **slurm_info(),
            **dict.fromkeys(("error", "reason", "error_type", "traceback", "exit_code")),
        )
        datamodule = build_datamodule(cfg)
        check_data(datamodule)
        task = build_task(cfg, datamodule)
        labels = {**run_labels(task), **labels}  # what was built: task, backbone, rnn, cell, head
        name, tags = run_name_and_tags(cfg, labels)
        metrics.update(name=name, **labels)
        if launch.weights_from is not None:
            load_weights(task, launch.weights_from, bool(cfg.get("trust_checkpoint")))
        module, inputs = task.complexity_inputs()
        params, macs = complexity.count_params(module), complexity.count_macs(module, *inputs)
        log.info(
            "%s: %s params, %s MACs at input %s", name, f"{params:,}", f"{macs:,}", tuple(inputs[0].shape)
        )

        group = sweep_group(labels)
        loggers = build_loggers(cfg, name, group, tags, metrics.data.get("wandb_id"))
        summary = {"params": params, "macs": macs}
        record = RunRecord(metrics, task.monitor, task.monitor_mode, logger_config(cfg, labels), summary)
        callbacks = [NonFiniteGuard(), record, StoreConfig(cfg, labels), GlobalRngState()]  # guard first
        callbacks += build_callbacks(cfg, bool(loggers))
        trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
        trainer_cfg["enable_progress_bar"] = progress_bar_enabled(trainer_cfg.get("enable_progress_bar"))
        # Without a configured ModelCheckpoint (callbacks=none), write no checkpoints at all.
        trainer_cfg["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
        if "sync_batchnorm" in trainer_cfg:
            trainer_cfg["sync_batchnorm"] = sync_batchnorm(trainer_cfg)
        plugins = [*(trainer_cfg.pop("plugins", None) or []), *lightning_plugins()]  # SLURM environment
        trainer: L.Trainer = instantiate(
            trainer_cfg, logger=loggers or False, callbacks=callbacks, plugins=plugins or None
        )
        check_ddp_launch(trainer, bool(hydra_job().get("multirun")))
        wandb_id = next((lg.version for lg in loggers if hasattr(lg, "define_best")), None)
        metrics.update(
            status="running",
            **summary,
            input_shape=list(inputs[0].shape[1:]),
            wandb_id=wandb_id,
            group=group,
            finetuned_from=str(launch.weights_from) if launch.weights_from else None,
        )
        with graceful_interrupts(trainer) as received:
            results = fit_and_test(cfg, trainer, task, datamodule, launch, record)
        outcome = {**results, **outcome_of(None, received, run_dir)}
    except BaseException as err:  # every ending is recorded; KeyboardInterrupt and SystemExit included
        outcome = outcome_of(err, received, run_dir if writer else None)
    exit_code = outcome["exit_code"]
    outcome["wall_time_s"] = round(previous_wall + time.time() - start, 2)
    metrics.update(**outcome)
    metrics.update(**finish_loggers(loggers, exit_code))
    for line in end_table(metrics.data, run_dir) if writer else ():
        log.info("%s", line)
    if metrics.data["status"] != "completed":
        raise RunStopped(metrics.data, exit_code)
    return metrics.data


def failed_sweep_job(message: str) -> None:
    """A failed job of a ``-m`` sweep (its metrics.json says so) lets the sweep go on and end with
    its failure summary and exit code (``crnn.sweeps.callbacks.FailureSummary``): it returns no
    value, since Hydra's basic sweeper re-raises a job's exception after the batch, before the
    summary. A sweeper that optimises (``hydra.sweeper.direction``: Optuna) gets the exception: it
    marks the trial failed and goes on by itself."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and "direction" in HydraConfig.get().sweeper:
        raise JobFailed(message)
    return None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    keep_freed_memory()  # here: a sweep's worker process (submitit, joblib) runs _main, not main
    job = hydra_job()
    multirun = job.get("multirun", False)
    if not multirun and job.get("sweep_params"):
        experiment = job["overrides"].get("experiment", "?")
        log.error(
            "experiment=%s is a sweep over %s: launch it with `crnn-train -m experiment=%s` (-m with single "
            "values runs one combination)",
            experiment,
            ", ".join(job["sweep_params"]),
            experiment,
        )
        raise SystemExit(EXIT_CODES["user_error"])
    try:
        result = train(cfg)
    except USER_ERRORS as err:  # before the run started
        log.error("%s", err)
        if multirun:
            return failed_sweep_job(str(err))
        raise SystemExit(EXIT_CODES["user_error"]) from None
    except RunStopped as stop:
        log.error(
            "%s: %s", stop.metrics.get("status"), stop.metrics.get("error") or stop.metrics.get("reason")
        )
        if multirun and stop.metrics.get("status") == "failed":
            return failed_sweep_job(str(stop))
        raise SystemExit(stop.exit_code) from None
    monitor = cfg.task.get("monitor")
    return result.get(f"{monitor}_best", result.get(monitor)) if monitor else None  # for optimising sweepers


def main() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(project_root()))
    quiet_known_noise()
    _main()


if __name__ == "__main__":
    main()
