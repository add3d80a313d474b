"""Which ``data``, ``backbone`` and ``head`` choices fit which task.

Read from the targets' signatures and return types (a classification backbone takes a
``layer_factory``, a detection backbone returns an :class:`~crnn.models.detection.FPNBackbone`, ...),
and the alternatives named in the errors from ``conf/`` itself: no list of options is kept here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from crnn.config.nodes import target_of, type_hints
from crnn.data import COCODataModule
from crnn.errors import ConfigError
from crnn.models.detection import FCOSDetector, FPNBackbone
from crnn.runtime import project_root
from crnn.tasks import BaseTask, ClassificationTask, DetectionTask

__all__ = ["FITS", "check_fit"]


def _accepts(name: str) -> Callable[[Any], bool]:
    return lambda target: name in inspect.signature(target).parameters


def _builds(cls: type) -> Callable[[Any], bool]:
    def check(target: Any) -> bool:
        built = target if isinstance(target, type) else type_hints(target).get("return")
        return isinstance(built, type) and issubclass(built, cls)

    return check


FITS: dict[type[BaseTask], dict[str, Callable[[Any], bool]]] = {
    ClassificationTask: {
        "data": lambda target: not _builds(COCODataModule)(target),
        "backbone": _accepts("layer_factory"),
        "head": _accepts("feature_shape"),
    },
    DetectionTask: {
        "data": _builds(COCODataModule),
        "backbone": _builds(FPNBackbone),
        "head": _builds(FCOSDetector),
    },
}
"""Per task, what a ``data``, ``backbone`` and ``head`` target must be to fit it."""


def _choice(group: str, node: Mapping[str, Any]) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        picked = HydraConfig.get().runtime.choices.get(group)
        if picked:
            return picked
    return str(node.get("_target_"))


def _options(group: str, fits: Callable[[Any], bool]) -> list[str]:
    """The options of ``conf/<group>/`` whose target fits."""
    out = []
    for path in sorted((project_root() / "conf" / group).glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        try:
            if target and fits(get_object(target)):
                out.append(path.stem)
        except Exception:
            continue
    return out


def _presets(data: str, task: str) -> list[str]:
    """``conf/experiment/`` single-run presets (no sweep) that choose ``task`` (and ``data``, when
    one does)."""
    found: dict[str, bool] = {}
    for path in sorted((project_root() / "conf" / "experiment").glob("*.yaml")):
        preset = OmegaConf.load(path)
        if OmegaConf.select(preset, "hydra.sweeper.params"):
            continue
        picks = {}
        for entry in preset.get("defaults") or []:
            if isinstance(entry, DictConfig):
                picks.update({str(k).split("/")[-1]: v for k, v in entry.items()})
        if picks.get("task") == task:
            found[path.stem] = picks.get("data") == data
    exact = [name for name, same_data in found.items() if same_data]
    return exact or list(found)


def check_fit(cfg: Mapping[str, Any]) -> None:
    """:class:`ConfigError` when the ``data``, ``backbone`` or ``head`` choice does not fit the
    task, naming what to choose instead (read from ``conf/``, never from a list kept here)."""
    task_cls = target_of(cfg["task"], "task")
    fits = next((f for cls, f in FITS.items() if issubclass(task_cls, cls)), None)
    if fits is None:
        return
    task = _choice("task", cfg["task"])
    data = _choice("data", cfg["data"])
    if not fits["data"](target_of(cfg["data"], "data")):
        other = next(cls for cls in FITS if not issubclass(task_cls, cls))
        wanted = other.task_name
        presets = _presets(data, wanted)
        raise ConfigError(
            f"data={data} is {wanted} data but task={task}: add "
            + (" or ".join(f"experiment={p}" for p in presets) + ", or " if presets else "")
            + f"task={wanted} backbone={'|'.join(_options('backbone', FITS[other]['backbone']))} "
            f"head={'|'.join(_options('head', FITS[other]['head']))}"
        )
    for group in ("backbone", "head"):
        if not fits[group](target_of(cfg[group], group)):
            raise ConfigError(
                f"{group}={_choice(group, cfg[group])} is not a {task} {group}: task={task} takes "
                f"{group}={', '.join(_options(group, fits[group]))}"
            )
