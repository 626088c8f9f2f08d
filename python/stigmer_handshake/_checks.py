"""Argument checks for the public API: a wrong type raises `InvalidInput` naming the argument, never a bare
TypeError from deep inside (or a panic in the core). Values (negative, empty, too large) are the core's to
judge; it raises typed errors for those. Text that no store can hold is refused here, once for every entry
point: a lone surrogate in any argument, a NUL in any text argument.

The checks follow each method's annotations, so they cannot drift from the signatures.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

from stigmer_handshake._core import InvalidInput

T = TypeVar("T")


class _Unloaded(type):
    """Stands in for a class that the annotations name from a module imported only for type checking:
    a value is an instance of it only once that module is loaded (so checking never loads it)."""

    def __instancecheck__(cls, value: object) -> bool:
        real = getattr(sys.modules.get(cls.__module__), cls.__name__, None)
        return isinstance(real, type) and isinstance(value, real)


#: temporalio's classes that the public API's annotations name: the package imports temporalio where it is
#: used, never for a check (see handshake.py).
_TYPE_CHECKING_ONLY = {
    name: _Unloaded(name, (), {"__module__": module})
    for module, name in (
        ("temporalio.client", "Client"),
        ("temporalio.converter", "DataConverter"),
        ("temporalio.service", "TLSConfig"),
    )
}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether `value` fits the annotation `hint` (the forms the public API uses)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts(arm, value) for arm in get_args(hint))
    if origin is typing.Literal:
        return value in get_args(hint)
    if origin in (Sequence, list, tuple):
        if isinstance(value, str | bytes | bytearray) or not isinstance(value, Sequence):
            return False
        (item, *_) = get_args(hint) or (Any,)
        return all(_accepts(item, v) for v in value)
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            return False
        key, item = get_args(hint) or (Any, Any)
        return all(_accepts(key, k) and _accepts(item, v) for k, v in value.items())
    if origin is type:
        return isinstance(value, type)
    if origin is not None and isinstance(origin, type):  # Callable and other generics: the runtime class
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:  # the core takes 64-bit integers
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if hint is bytes:
        if isinstance(value, memoryview):
            try:
                value.nbytes  # noqa: B018  (a released view raises here)
            except ValueError:
                return False
            return True
        return isinstance(value, bytes | bytearray)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a form not checked here: left to the callee


def _not_utf8(value: Any) -> bool:
    """Whether `value` is, or holds, a str that UTF-8 cannot encode (a lone surrogate): Rust and the
    stores hold UTF-8 only."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(_not_utf8(k) or _not_utf8(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_not_utf8(v) for v in value)
    return False


def _has_nul(value: Any) -> bool:
    """Whether `value` is, or holds, a str with a NUL: PostgreSQL's text cannot hold one, so no store does."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _describe(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("collections.abc.", "")
    return getattr(hint, "__name__", text) if isinstance(hint, type) else text


def type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """`function`'s annotations, evaluated: temporalio's classes as stand-ins, so temporalio is not loaded
    (plain `typing.get_type_hints` needs them imported first)."""
    return typing.get_type_hints(function, localns=_TYPE_CHECKING_ONLY)


def checked(function: Callable[..., T]) -> Callable[..., T]:
    """Check the arguments of `function` against its annotations before it runs."""
    signature = inspect.signature(function)
    hints: dict[str, Any] = {}

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not hints:
            hints.update(type_hints(function))
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise InvalidInput(f"{function.__name__}(): {err}") from None
        for name, value in bound.arguments.items():
            parameter = signature.parameters[name]
            hint = hints.get(name, Any)
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                values = value
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                values = tuple(value.values())
            else:
                values = (value,)
            for each in values:
                if not _accepts(hint, each):
                    raise InvalidInput(
                        f"{function.__name__}(): {name} must be {_describe(hint)}, not {type(each).__name__}"
                        + (" (a finite number)" if hint is float and isinstance(each, float) else "")
                        + (" (released)" if isinstance(each, memoryview) else "")
                    )
                if _not_utf8(each):
                    raise InvalidInput(f"{function.__name__}(): {name} holds a lone surrogate, which is not UTF-8")
                # Text arguments only: a value of any type (a result) goes through the data converter.
                if hint is not Any and _has_nul(each):
                    raise InvalidInput(f"{function.__name__}(): {name} holds a NUL character, which no store keeps")

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            check(args, kwargs)
            return await function(*args, **kwargs)

        return typing.cast(Callable[..., T], run_async)

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> T:
        check(args, kwargs)
        return function(*args, **kwargs)

    return run


def check_public_methods(cls: type[T]) -> type[T]:
    """Apply `checked` to every public method of `cls` (class methods included)."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(member, classmethod):
            setattr(cls, name, classmethod(checked(member.__func__)))
        elif inspect.isfunction(member):
            setattr(cls, name, checked(member))
    return cls
