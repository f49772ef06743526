"""Checks of config fields, shared by the config dataclasses' ``__post_init__``: each raises
naming the field and the value it got.

A wrong type raises :class:`ConfigTypeError`, which is both a ``TypeError`` and a
``ValueError`` (msae's configs raised ``ValueError`` for every bad field before, and callers
catch that); a value out of range raises ``ValueError``. ``bool`` is not accepted as a number.
NumPy scalars are accepted and replaced by the Python ``int`` or ``float`` they equal, so that
the config still writes to JSON.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type (also a ``ValueError``, see the module docstring)."""


def _value(config: Any, name: str) -> Any:
    return getattr(config, name)


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(config: Any, name: str, low: int | None = None, high: int | None = None, *,
              high_name: str | None = None, optional: bool = False) -> None:
    """``config.<name>`` must be an int in ``low..high`` (either bound may be None); with
    ``optional``, None passes. ``high_name`` names the field the upper bound comes from."""
    value = _value(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an integer or None" if optional else "an integer"
        raise ConfigTypeError(f"{name} must be {kind}, got {value!r} ({_type_name(value)})")
    if type(value) is not int:
        value = int(value)
        setattr(config, name, value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {_int_range(low, high, high_name)}, got {value!r}")


def _int_range(low: int | None, high: int | None, high_name: str | None) -> str:
    if high is not None:
        top = f"{high_name}={high}" if high_name else str(high)
        return f"an integer in {low}..{top}" if low is not None else f"an integer <= {top}"
    if low == 1:
        return "a positive integer"
    if low == 0:
        return "a non-negative integer"
    return f"an integer >= {low}"


def check_real(config: Any, name: str, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, high_name: str | None = None,
               optional: bool = False, hint: str = "") -> None:
    """``config.<name>`` must be a finite real number between ``low`` and ``high`` (closed
    bounds unless ``low_open`` / ``high_open``; either may be None); with ``optional``, None
    passes. ``hint`` is appended to the range message."""
    value = _value(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or None" if optional else "a number"
        raise ConfigTypeError(f"{name} must be {kind}, got {value!r} ({_type_name(value)}){hint}")
    if type(value) not in (int, float):
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        setattr(config, name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {_real_range(low, high, low_open, high_open, high_name)}, got {value!r}{hint}")


def _real_range(low, high, low_open, high_open, high_name) -> str:
    if high is None:
        if low == 0:
            return "positive" if low_open else ">= 0"
        return f"> {low}" if low_open else f">= {low}"
    top = f"{high_name}={high}" if high_name else f"{high:g}"
    if low is None:
        return f"< {top}" if high_open else f"<= {top}"
    return f"in {'(' if low_open else '['}{low:g}, {top}{')' if high_open else ']'}"


def check_bool(config: Any, name: str) -> None:
    """``config.<name>`` must be True or False."""
    value = _value(config, name)
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be True or False, got {value!r} ({_type_name(value)})")


def check_str(config: Any, name: str) -> None:
    """``config.<name>`` must be a string."""
    value = _value(config, name)
    if not isinstance(value, str):
        raise ConfigTypeError(f"{name} must be a string, got {value!r} ({_type_name(value)})")


def check_seed(config: Any, name: str = "seed") -> None:
    """``config.<name>`` must be an int that ``torch.Generator.manual_seed`` accepts."""
    check_int(config, name, -(2**63), 2**64 - 1)
