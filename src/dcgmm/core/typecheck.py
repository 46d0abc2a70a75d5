"""Type checks of configured values against a constructor's annotations, before it runs.

A value given on the command line arrives as whatever YAML made of it (``model.K=abc`` is the
string ``"abc"``); a constructor that calls ``int()`` on it would fail with a traceback deep
inside. :func:`check_arguments` compares every value with the annotation of its parameter and
raises a one-line :class:`~dcgmm.errors.ConfigError` that names the key, the value and what it
must be. Only plain annotations are checked (``int``, ``float``, ``bool``, ``str``, ``None`` and
unions of them); any other annotation (a sequence, a callable, a class) is left to the callee.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping

from dcgmm.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _plain_types(annotation) -> tuple[type, ...] | None:
    """The plain types an annotation allows, or None when it allows anything else too."""
    if annotation in _NAMES:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        allowed: list[type] = []
        for arg in typing.get_args(annotation):
            plain = _plain_types(arg)
            if plain is None:
                return None
            allowed.extend(plain)
        return tuple(allowed)
    return None


def _fits(value, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    if isinstance(value, float):
        return float in allowed or (int in allowed and value.is_integer())
    if isinstance(value, str):
        return str in allowed
    return False


def check_arguments(target: Callable, params: Mapping, where: str) -> None:
    """Raise a one-line ConfigError for the first value in ``params`` that its parameter's plain
    annotation on ``target`` (a class or function) does not allow; ``where`` prefixes the key
    (``"model."`` gives ``model.K='abc' must be an integer``)."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
        signature = inspect.signature(function)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not ours to judge
        return
    for name, value in params.items():
        if name.startswith("_") or name not in hints or name not in signature.parameters:
            continue
        allowed = _plain_types(hints[name])
        if allowed is None or _fits(value, allowed):
            continue
        wanted = " or ".join(_NAMES[t] for t in allowed if t is not type(None))
        default = signature.parameters[name].default
        example = f"; e.g. {where}{name}={str(default).lower() if isinstance(default, bool) else default}" if default not in (None, inspect.Parameter.empty) else ""
        raise ConfigError(f"{where}{name}={value!r} must be {wanted}{example}")
