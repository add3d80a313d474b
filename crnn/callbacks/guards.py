"""What keeps a run's checkpoints trustworthy: no non-finite weights, exact random state on resume."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss (or weights): the run stops and is recorded as failed."""

    reason = "non-finite loss"


class NonFiniteGuard(L.Callback):
    """Stops training at the first non-finite training loss, before its backward pass (so its
    gradients never reach the weights), at an epoch whose validation loss is non-finite, and
    refuses to write a checkpoint holding non-finite weights (a finite loss can still overflow
    them). ``last.ckpt`` and ``best.ckpt`` therefore stay the last finite ones."""

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.detach().float().item()}) at epoch "
                f"{trainer.current_epoch}, "
                f"step {trainer.global_step}: stopped; the checkpoints are the last finite ones"
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """A finite training loss can still leave weights whose validation loss overflows (the
        accuracy then stays finite and may even "improve"): stop before this epoch is recorded or
        checkpointed."""
        for key in ("train/loss_epoch", "val/loss"):
            value = trainer.callback_metrics.get(key)
            if value is not None and not torch.isfinite(value).all():
                raise NonFiniteLossError(
                    f"non-finite {key.removesuffix('_epoch')} ({float(value)}) at epoch "
                    f"{trainer.current_epoch}, step {trainer.global_step}: stopped; the checkpoints are "
                    "the last finite ones"
                )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p.detach()).all()]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}) at epoch "
                f"{trainer.current_epoch}, step {trainer.global_step}: stopped without writing a checkpoint"
            )


class GlobalRngState(L.Callback):
    """Saves the global random generators (torch CPU and CUDA, numpy, python) in every checkpoint
    and restores them on resume, so that whatever draws from them (dropout, samplers without a
    generator of their own) continues as in the uninterrupted run.

    States are stored as tensors and lists, which ``torch.load(weights_only=True)`` accepts.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": [version, list(internal), gauss],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
