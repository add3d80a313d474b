"""``crnn-eval``: evaluate a checkpoint on the validation (and test) split, write metrics.json.

    crnn-eval ckpt_path=outputs/runs/.../checkpoints/best.ckpt [key=value ...]

The checkpoint carries its run's resolved config (see :class:`crnn.runtime.StoreConfig`);
``key=value`` arguments override it (e.g. ``data.root=/data/coco trainer.accelerator=cpu``).
Results go to ``<run>/eval/<time>/metrics.json`` unless ``output_dir=...`` says otherwise.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from crnn import complexity
from crnn.errors import USER_ERRORS
from crnn.runtime import CONFIG_KEY, MetricsFile, git_commit, progress_bar_enabled

log = logging.getLogger("crnn.eval")


def evaluate(
    ckpt_path: str | Path, overrides: list[str] | None = None, output_dir: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate ``ckpt_path``; returns the metrics written to ``<output_dir>/metrics.json``."""
    ckpt_path = Path(ckpt_path).expanduser().resolve()
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    stored = torch.load(ckpt_path, map_location="cpu", weights_only=False).get(CONFIG_KEY)
    if stored is None:
        raise ValueError(f"{ckpt_path} holds no crnn config ({CONFIG_KEY!r}): was it written by crnn-train?")
    cfg = OmegaConf.merge(OmegaConf.create(stored["config"]), OmegaConf.from_dotlist(overrides or []))
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    out = Path(output_dir) if output_dir else run_dir / "eval" / time.strftime("%Y-%m-%d_%H-%M-%S")
    cfg.paths.output_dir = str(out)

    datamodule = instantiate(cfg.data)
    task = get_class(cfg.task._target_).load_from_checkpoint(ckpt_path, map_location="cpu")
    module, inputs = task.complexity_inputs()
    metrics = MetricsFile(out / "metrics.json")
    metrics.update(
        status="running",
        **stored["choices"],
        seed=cfg.get("seed"),
        ckpt_path=str(ckpt_path),
        params=complexity.count_params(module),
        macs=complexity.count_macs(module, *inputs),
        git_commit=git_commit(),
    )
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        logger=False,
        default_root_dir=str(out),
        enable_progress_bar=progress_bar_enabled(None),
    )
    start, results = time.time(), {}
    for out_metrics in trainer.validate(task, datamodule=datamodule, verbose=False):
        results.update({k: float(v) for k, v in out_metrics.items()})
    if cfg.get("test_after_fit"):
        for out_metrics in trainer.test(task, datamodule=datamodule, verbose=False):
            results.update({k: float(v) for k, v in out_metrics.items()})
    metrics.update(**results, status="completed", wall_time_s=round(time.time() - start, 2))
    log.info("metrics.json: %s", metrics.path)
    return metrics.data


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    keyed = dict(a.split("=", 1) for a in args if "=" in a)
    if "ckpt_path" not in keyed or any("=" not in a for a in args):
        raise SystemExit("usage: crnn-eval ckpt_path=PATH [output_dir=DIR] [key=value ...]")
    overrides = [f"{k}={v}" for k, v in keyed.items() if k not in ("ckpt_path", "output_dir")]
    try:
        results = evaluate(keyed["ckpt_path"], overrides, keyed.get("output_dir"))
    except (*USER_ERRORS, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    for key in sorted(results):
        if key.startswith(("val/", "test/")):
            print(f"{key:>12s}  {results[key]:.4f}")


if __name__ == "__main__":
    main()
