"""The resolvers ``conf/`` calls, registered when :mod:`crnn.config` is first imported (every entry
point and :func:`crnn.builders.compose_config` import it before a config is resolved)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

__all__ = ["fused_optimizer"]


def fused_optimizer(precision: Any, gradient_clip_val: Any) -> bool:
    """``task.optimizer.fused``, as ``conf/task/optimizer/*.yaml`` set it:
    ``${crnn_fused_optimizer:${trainer.precision},${trainer.gradient_clip_val}}``.

    torch's fused optimizer step runs one kernel per parameter tensor, on CPU and GPU; torch's CPU
    default loops over the tensors in Python (AdamW's step for the FCOS detector with sws_birnn towers,
    149 parameter tensors, on one Zen 5 core: ~7 ms, fused ~2.7). Off where Lightning refuses it:
    gradient clipping under mixed precision (its mixed-precision plugin raises for a fused optimizer,
    under bf16 too, where nothing is scaled: Lightning issue 21435).
    """
    mixed = str(precision) in ("16", "bf16") or str(precision).endswith("-mixed")
    return not (mixed and bool(gradient_clip_val))


OmegaConf.register_new_resolver("crnn_fused_optimizer", fused_optimizer, replace=True)
