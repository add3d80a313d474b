"""Checkpoints of a run folder: ``best.ckpt`` and ``last.ckpt``, the latter also at an interrupt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class RunCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` that keeps one file per name in its folder.

    - Never writes ``-v1`` copies (``enable_version_counter=False``): a resumed run rewrites its
      own ``best.ckpt`` / ``last.ckpt``.
    - A run folder copied or moved elsewhere and resumed there keeps its best score and paths
      (Lightning drops them when ``dirpath`` changed): the stored paths are re-rooted in the new
      folder.
    - ``save_on_interrupt``: Ctrl-C / SIGTERM (stopped at a batch boundary) saves the checkpoint at
      the interrupt. For ``last.ckpt`` (``monitor=None``, ``save_top_k=1``, ``filename=last``).
    """

    def __init__(self, *args: Any, save_on_interrupt: bool = False, **kwargs: Any):
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self.save_on_interrupt = save_on_interrupt

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = _rerooted(state_dict, str(old), str(self.dirpath))
        super().load_state_dict(state_dict)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if not (self.save_on_interrupt and interrupted and trainer.global_step > 0):
            return
        if (
            trainer.sanity_checking
            or trainer.fast_dev_run
            or self._last_global_step_saved == trainer.global_step
        ):
            return
        self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


def _rerooted(value: Any, old: str, new: str) -> Any:
    """Every string path under ``old`` moved under ``new`` (dict keys included)."""
    if isinstance(value, str) and (value == old or value.startswith(old.rstrip("/") + "/")):
        return str(Path(new) / Path(value).relative_to(old)) if value != old else new
    if isinstance(value, dict):
        return {_rerooted(k, old, new): _rerooted(v, old, new) for k, v in value.items()}
    return value
