"""Config nodes: checked against their target's signature, then instantiated.

A node is a mapping with a ``_target_`` (and, for a partial, ``_partial_: true``). Before it is
built, :func:`check_node` checks its keys against the target's parameters and its values against
their annotations (pydantic, strict mode): an unknown key, a value of the wrong type or a size
that must be positive is one :class:`~crnn.errors.ConfigError` naming the key, e.g.
``backbone.width must be a positive int, got -16``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import ConfigDict, TypeAdapter, ValidationError

from crnn.errors import ConfigError

__all__ = ["check_node", "instantiate_node", "plain", "target_of", "type_hints"]


def plain(node: Any) -> Any:
    """A config node as plain containers, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def target_of(node: Mapping[str, Any], key: str) -> Any:
    """The callable a node's ``_target_`` names; :class:`ConfigError` if it cannot be imported."""
    if not isinstance(node, Mapping) or not node.get("_target_"):
        raise ConfigError(f"{key}: a config node with a _target_ is needed, got {node!r}")
    try:
        return get_object(node["_target_"])
    except Exception as err:
        raise ConfigError(f"{key}._target_={node['_target_']}: cannot be imported ({err})") from None


def check_node(node: Mapping[str, Any], key: str, injected: Iterable[str] = ()) -> None:
    """Check a node's keys and values against its target's signature, before building it.

    Every key must be a parameter of the target (unless it takes ``**kwargs``) and not one of
    ``injected`` (the arguments crnn supplies: sizes from the data, the layer factory, ...); every
    value must fit the parameter's annotation, checked by pydantic in strict mode
    (``PositiveInt``: ``backbone.width=-16`` -> "backbone.width must be a positive int, got -16").
    """
    target = target_of(node, key)
    params = inspect.signature(target).parameters
    injected = set(injected)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    settable = [n for n, p in params.items() if n not in injected and p.kind not in variadic]
    hints = type_hints(target)
    for name, value in node.items():
        if name.startswith("_"):
            continue
        if name in injected:
            raise ConfigError(f"{key}.{name} is set by crnn, not by the config: remove it")
        if name not in params and not takes_any:
            raise ConfigError(
                f"{key}.{name}: not a setting of {node['_target_']}; its settings are: {', '.join(settable)}"
            )
        if name in hints and not (isinstance(value, Mapping) and "_target_" in value):
            _check_value(hints[name], value, f"{key}.{name}")


def type_hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # annotations that name types not importable here: check the keys only
        return {}


def _check_value(hint: Any, value: Any, key: str) -> None:
    try:
        adapter = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # an annotation pydantic has no schema for (a callable, ...): keys only
        return
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError as err:
        if isinstance(value, list):  # YAML has no tuples: a list stands for one
            try:
                adapter.validate_python(tuple(value), strict=True)
                return
            except ValidationError:
                pass
        raise ConfigError(f"{key} must be {_expected(err, value)}, got {value!r}") from None


def _expected(err: ValidationError, value: Any) -> str:
    """pydantic's errors as the words after "must be"."""
    kind = "int" if isinstance(value, int) and not isinstance(value, bool) else "number"
    words = []
    for e in err.errors():
        ctx = e.get("ctx") or {}
        if e["type"] == "greater_than" and ctx.get("gt") == 0:
            words.append(f"a positive {kind}")
        elif e["type"] == "greater_than_equal" and ctx.get("ge") == 0:
            words.append(f"a non-negative {kind}")
        elif e["type"] == "literal_error":
            words.append(f"{ctx['expected']}")
        else:
            words.append(e["msg"].removeprefix("Input should be ").replace("None", "null"))
    return " or ".join(dict.fromkeys(words))


def instantiate_node(node: Mapping[str, Any], key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` whose construction errors become one
    :class:`ConfigError` naming ``key`` (Hydra wraps them in its own exception, with a traceback
    that says nothing to a user). Errors that are not about the config pass through."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, (TypeError, ValueError)):
            raise ConfigError(f"{key} ({node.get('_target_')}): {cause}") from err
        raise
