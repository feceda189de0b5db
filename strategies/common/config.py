"""Typed, validated configuration objects shared by the strategies.

Configs are frozen dataclasses. ``from_overrides`` turns user-facing keys (``lambda`` for
``lambda_``) and string values (from the CLI) into typed fields, with one clear error per
bad key or value. Every number must be finite (no ``nan``/``inf``) and every integer must fit
a signed 64-bit integer (what torch takes); each config checks its own ranges.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")

#: integers must fit torch's int64
INT_LIMIT = 2**63


class ConfigError(ValueError):
    """A bad hyperparameter: the message names the parameter and the fix."""


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False, hint: str = "") -> None:
    """ConfigError unless ``value`` is a finite number within the bounds (None: unbounded;
    ``*_open``: the bound itself excluded). NaN and infinities always fail."""
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        where = (f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
    elif low is not None:
        where = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        where = f"{'<' if high_open else '<='} {high:g}"
    else:
        where = ""
    raise ConfigError(f"{name} must be a finite number{' ' * bool(where)}{where}, got "
                      f"{value!r}{hint}")


def check_count(name: str, value: Any, low: int = 1) -> None:
    """ConfigError unless ``value`` is an integer ``>= low`` (and a 64-bit one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if value >= INT_LIMIT:
        raise ConfigError(f"{name} must be an integer from {low} to 2**63 - 1 (a 64-bit "
                          f"integer, what torch takes), got {value!r}")


def public_key(field_name: str) -> str:
    """``lambda_`` -> ``lambda``: Python keywords get a trailing underscore in fields."""
    return field_name[:-1] if field_name.endswith("_") else field_name


def _coerce(section: str, key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(
                f"{section}.{key}={value!r} is not allowed; choose one of "
                f"{', '.join(map(str, choices))}"
            )
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(section, key, value, args[0])
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            # (64-bit range: checked by ``from_overrides`` after the config's own bounds)
            if isinstance(value, str) and "e" in value.lower():  # 2e3: exact, 1.5e0: refused
                try:
                    exact = decimal.Decimal(value.strip())
                except decimal.InvalidOperation:
                    raise ValueError(value) from None
                if not exact.is_finite() or exact != exact.to_integral_value():
                    raise ValueError(value)
                return int(exact)
            return int(value)
        if typ is float:
            number = float(value)
            if not math.isfinite(number):
                raise OverflowError(value)
            return number
        if typ is str:
            return str(value)
    except OverflowError:
        what = "a finite number (not nan or inf)"
        raise ConfigError(
            f"{section}.{key}={value!r} is out of range; give {what} for {section}.{key}"
        ) from None
    except (TypeError, ValueError):
        raise ConfigError(
            f"{section}.{key}={value!r} is not a valid {typ.__name__}; "
            f"give e.g. {section}.{key}=<{typ.__name__}>"
        ) from None
    return value


def from_overrides(cls: type[C], overrides: Mapping[str, Any], section: str) -> C:
    """Build config ``cls`` from defaults plus ``overrides`` (public keys, any value types).

    A config shared by several sections (its errors must name the section the keys were given
    in) checks its ranges in ``check_in(section)``, which this calls after building it."""
    hints = typing.get_type_hints(cls)
    by_public = {public_key(f.name): f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in overrides.items():
        if key not in by_public:
            raise ConfigError(
                f"unknown parameter '{section}.{key}'; valid {section} parameters: "
                f"{', '.join(sorted(by_public))}"
            )
        name = by_public[key]
        kwargs[name] = _coerce(section, key, value, hints[name])
    config = cls(**kwargs)  # its own bounds first: they say what the value must be
    for key, name in by_public.items():
        number = kwargs.get(name)
        if isinstance(number, int) and not -INT_LIMIT <= number < INT_LIMIT:
            bound = "at most 2**63 - 1" if number > 0 else "at least -2**63"
            raise ConfigError(f"{section}.{key}={overrides[key]!r} is out of range: "
                              f"{section}.{key} must be {bound} (a 64-bit integer, what "
                              "torch takes)")
    check_in = getattr(config, "check_in", None)
    if check_in is not None:
        check_in(section)
    return config


def to_public_dict(config: Any) -> dict[str, Any]:
    """Config as a plain dict with public keys (for run records and W&B)."""
    return {public_key(f.name): getattr(config, f.name) for f in dataclasses.fields(config)}


def config_of(cls: type[C], config: C | None, overrides: Mapping[str, Any]) -> C:
    """``config``, or ``cls(**overrides)`` (validated by ``cls``), for a plugin that takes
    either its Config or the Config's fields as keywords (not both)."""
    if config is None:
        return cls(**overrides)
    if overrides:
        raise ConfigError(f"pass either a {cls.__name__} or keyword overrides, not both")
    return config


def split_config(cls: type[C], config: C | None, kwargs: dict[str, Any]) -> C:
    """``config_of`` over the entries of ``kwargs`` named after ``cls``'s fields, removed from
    ``kwargs`` (a strategy's other keywords are the template's)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return config_of(cls, config, {k: kwargs.pop(k) for k in list(kwargs) if k in names})
