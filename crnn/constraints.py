"""Constrained parameter types of the configurable constructors (models, tasks, data).

Plain ``typing.Annotated`` with :mod:`annotated_types` bounds: no torch, no Hydra, so any package
may annotate with them. :func:`crnn.config.check_node` checks a config value against them (pydantic,
strict) before the object is built: ``backbone.width=-16`` -> "backbone.width must be a positive int,
got -16". (``crnn.layers`` stays pure torch and checks its own arguments.)
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval

__all__ = ["Fraction", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Probability"]

PositiveInt = Annotated[int, Gt(0)]
"""A size or a count: an ``int > 0``."""
PositiveFloat = Annotated[float, Gt(0)]
"""A multiplier: a ``float > 0``."""
NonNegativeInt = Annotated[int, Ge(0)]
"""An ``int >= 0`` (a depth that may be zero, an epoch index)."""
NonNegativeFloat = Annotated[float, Ge(0)]
"""A ``float >= 0`` (epochs of warm-up, a decay factor)."""
Fraction = Annotated[float, Interval(ge=0, le=1)]
"""A share in ``[0, 1]`` (label smoothing, the final learning-rate ratio)."""
Probability = Annotated[float, Interval(gt=0, lt=1)]
"""A probability strictly between 0 and 1 (a prior, a score or IoU threshold)."""
