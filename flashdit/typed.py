"""Typed dataclasses from plain values (YAML recipes, a pipeline's stored settings, call arguments).

pydantic checks each field against its annotation, the declared range included (``Annotated[Float, Gt(0)]`` beside
the field); a failure becomes one line naming the key, the value and what is allowed. Ground floor: imports only
:mod:`flashdit.errors`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from annotated_types import Ge, Gt, Interval, Le, Lt  # noqa: F401  (re-exported: the ranges recipes declare)
from pydantic import (
    AfterValidator,
    AllowInfNan,
    ConfigDict,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from .errors import ConfigError

Float = Annotated[float, Strict(), AllowInfNan(False)]  # a finite number: an int is taken, a bool or a string is not
Int = StrictInt  # not a bool, not 2.0, not "2"
Bool = StrictBool
Str = StrictStr
Count = Annotated[StrictInt, Ge(1)]  # a positive number of things


def odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError("must be odd (a centred kernel)")
    return k


OddKernel = Annotated[StrictInt, Ge(1), AfterValidator(odd)]  # a centred convolution kernel
STRICT_KEYS = ConfigDict(extra="forbid")  # a dataclass's ``__pydantic_config__``: unknown keys are errors


@functools.cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def validate(cls, values: Any, what: str = "config"):
    """``cls`` (a dataclass) built from ``values``, every field checked against its annotation and range.

    Raises:
        ConfigError: one line naming the first bad key, its value and what is allowed.
    """
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as err:
        raise ConfigError(describe(err.errors()[0], cls, what)) from None


def signature_dataclass(fn, name: str, optional: tuple[str, ...] = (), skip: tuple[str, ...] = (), extra=()) -> type:
    """A strict-keyed dataclass whose fields are ``fn``'s keyword parameters, with their annotations (types and
    ranges) and defaults: one declaration serves the function and every config built from it. Fields in ``optional``
    also take None (their default becomes None: something else fills them); ``extra``: more ``(name, type, default)``
    fields, first."""
    fn = inspect.unwrap(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = [(n, tp, dataclasses.field(default=d)) for n, tp, d in extra]
    for param in inspect.signature(fn).parameters.values():
        if param.name in ("self", *skip) or param.kind is not param.POSITIONAL_OR_KEYWORD:
            continue
        tp, default = hints[param.name], param.default
        if param.name in optional:
            tp, default = tp | None, None
        fields.append((param.name, tp, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(name, fields, namespace={"__pydantic_config__": STRICT_KEYS})


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(tp):
    """The dataclass inside ``X | None`` or ``Annotated[X, ...]``, else ``tp``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = options[0] if len(options) == 1 else tp
            if len(options) != 1:
                return tp
        else:
            return tp


def _type_at(cls, loc: tuple):
    """The annotation of the key at ``loc`` (None where the path leaves the dataclasses)."""
    tp = cls
    for part in loc:
        tp = _unwrap(tp)
        if not dataclasses.is_dataclass(tp) or not isinstance(part, str):
            return None
        tp = typing.get_type_hints(tp, include_extras=True).get(part)
    return _unwrap(tp)


def describe(error: dict, cls, what: str = "config") -> str:
    """One line for one pydantic error: ``train.lr=-1.0 must be greater than 0``."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _key(loc)
    if kind == "unexpected_keyword_argument":
        section = _type_at(cls, loc[:-1])
        allowed = [f.name for f in dataclasses.fields(section)] if dataclasses.is_dataclass(section) else []
        where = _key(loc[:-1]) or "the top level"
        return f"unknown {what} key(s) [{key!r}]; allowed under {where}: {allowed}"
    if kind in ("dataclass_type", "dataclass_args_type", "dict_type"):
        return f"{key or what}: expected a mapping of keys, got {value!r}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        tp = _type_at(cls, loc[:-1])
        size = len(typing.get_args(tp)) if typing.get_origin(tp) is tuple else None
        return f"{_key(loc[:-1])}={value!r} must have {size or 'more'} items"
    message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    message = re.sub(r"^\w+ should ", "must ", message).replace(" after validation", "")
    if kind in ("value_error", "assertion_error") and (not loc or isinstance(value, dict)):
        return f"{key}: {message}" if key else message  # a check across fields (``__post_init__``)
    return f"{key}={value!r} {message}" if key else message


# --------------------------------------------------------------------------------------------
# YAML with YAML 1.2 numbers: ``1e-4`` is a float (PyYAML's YAML 1.1 reads it as a string)


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str, source: str | Path = "<string>") -> Any:
    """Parse YAML (``1e-4`` is a number); a syntax error names ``source``, the line and the column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where} ({problem})") from None
