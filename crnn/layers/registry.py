"""Layer registry: pick a 2-D layer by name (configs map ``rnn.<kwarg>`` to its keyword arguments)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from .cells import CELLS

__all__ = [
    "LAYERS",
    "NO_LAYER",
    "Layer2d",
    "LayerInfo",
    "build_layer",
    "layer_info",
    "layer_kwargs",
    "list_layers",
    "register_layer",
]


@dataclass(frozen=True)
class LayerInfo:
    """What tools and tests need to know about a registered layer, kept beside its class.

    * ``cells``: the recurrent cells it takes (``()`` for a layer without a ``cell`` argument);
    * ``python_loop``: its forward loops over steps in Python, so an export trace unrolls it for
      the traced input size;
    * ``family``: ``"baseline"`` (the plain CNN), ``"conv"``, ``"separable_rnn"``,
      ``"sequencer"``, ``"diagonal_rnn"`` or ``"rnn2d"``;
    * ``order``: position in the paper's tables (smaller first);
    * ``marker``: its matplotlib marker in the accuracy-vs-cost plots;
    * ``fast_path``: its vanilla-cell passes take :mod:`crnn.layers.fast_rnn`'s CPU path by default
      (so benchmarks show it beside ``nn.RNN``).
    """

    name: str
    family: str
    order: int
    marker: str
    cells: tuple[str, ...] = ()
    python_loop: bool = False
    fast_path: bool = False

    def takes_cell(self, cell: str) -> bool:
        return cell in self.cells


class Layer2d(nn.Module):
    """Base of every registered layer: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Subclasses take ``(in_channels, out_channels, **kwargs)`` and expose their closed-form sizes
    (checked against ``crnn.complexity`` in the tests):

    * ``closed_form_params()``: number of parameters;
    * ``closed_form_macs(height, width)``: multiply-accumulates for one sample of size
      ``height x width`` (a batch of B costs B times that), under the convention of
      :mod:`crnn.complexity` (matrix products and convolutions only).
    """

    in_channels: int
    out_channels: int

    def forward_levels(self, maps: list[Tensor]) -> list[Tensor]:
        """The layer on each of several maps ``(B_k, C_in, H_k, W_k)`` (e.g. the pyramid levels a
        detection tower shares); layers that can run them together override it."""
        return [self(m) for m in maps]

    def closed_form_params(self) -> int:
        raise NotImplementedError

    def closed_form_macs(self, height: int, width: int) -> int:
        raise NotImplementedError


LAYERS: dict[str, type[Layer2d]] = {}

NO_LAYER = LayerInfo(name="none", family="baseline", order=0, marker="o")
"""``rnn=none``: the plain CNN (no block replaced); listed first in tables, never built."""

ALL_CELLS: tuple[str, ...] = tuple(CELLS)


def register_layer(
    name: str,
    *,
    family: str,
    order: int,
    marker: str,
    cells: tuple[str, ...] = (),
    python_loop: bool = False,
    fast_path: bool = False,
) -> Callable[[type[Layer2d]], type[Layer2d]]:
    """Class decorator: make a layer buildable as ``build_layer(name, ...)`` and record its
    :class:`LayerInfo` as ``cls.info``."""
    info = LayerInfo(name, family, order, marker, tuple(cells), python_loop, fast_path)

    def deco(cls: type[Layer2d]) -> type[Layer2d]:
        if name in LAYERS or name == NO_LAYER.name:
            raise ValueError(f"layer {name!r} is already registered")
        LAYERS[name] = cls
        cls.layer_name = name
        cls.info = info
        return cls

    return deco


def layer_info(name: str) -> LayerInfo:
    """The :class:`LayerInfo` of a registered layer (or of ``"none"``, the plain CNN)."""
    return NO_LAYER if name == NO_LAYER.name else _lookup(name).info


def list_layers(*, cell: str | None = None, include_none: bool = False) -> list[str]:
    """Registered layer names in paper order; with ``cell``, only those taking that cell (a
    layer without a ``cell`` argument is kept: it has no cell to choose)."""
    infos = sorted((cls.info for cls in LAYERS.values()), key=lambda i: (i.order, i.name))
    names = [i.name for i in infos if cell is None or not i.cells or i.takes_cell(cell)]
    return ([NO_LAYER.name] if include_none else []) + names


def layer_kwargs(name: str) -> tuple[str, ...]:
    """The keyword arguments layer ``name`` accepts besides ``in_channels``/``out_channels``."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    return tuple(p.name for p in params if p.name not in ("in_channels", "out_channels"))


def _lookup(name: str) -> type[Layer2d]:
    if name not in LAYERS:
        raise ValueError(f"unknown layer {name!r}: valid layers are {', '.join(sorted(LAYERS))}")
    return LAYERS[name]


def build_layer(name: str, in_channels: int, out_channels: int, **kwargs) -> Layer2d:
    """Build the registered layer ``name`` mapping ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    Raises ``ValueError`` for an unknown name (listing the valid ones) and for a keyword argument
    the layer does not take (naming it and the ones it does take). ``hidden_channels=None`` means
    the layer's default width.
    """
    cls = _lookup(name)
    accepted = layer_kwargs(name)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(
            f"layer {name!r} does not take {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) if accepted else '(no keyword arguments)'}"
        )
    return cls(in_channels, out_channels, **kwargs)


def check_positive(**sizes: int) -> None:
    """``ValueError`` naming the first size that is not a positive int."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
