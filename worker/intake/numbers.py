"""Integers that do not fit 64 bits: found in the raw JSON, before anything is stored.

orjson turns an integer literal beyond 64 bits into a float without a word
(``123456789012345678901234567890`` becomes ``1.2345678901234568e+29``), so the value stored
and sent upstream would not be the one the caller wrote. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

from schemas.upstream import ROOT_FIELD

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# 2**63 has 19 digits: a body without a run of 19 digits holds no out-of-range integer, and a
# regex scan costs far less than a second parse (which only such rare bodies pay).
_LONG_DIGITS = re.compile(rb"\d{19,}")


class _Oversized:
    """Stands for an integer literal outside the signed 64-bit range."""

    __slots__ = ()


_OVERSIZED = _Oversized()


def _parse_int(text: str) -> int | _Oversized:
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else _OVERSIZED


def _path_of_oversized(value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    if value is _OVERSIZED:
        return path
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        found = _path_of_oversized(item, (*path, str(key)))
        if found is not None:
            return found
    return None


def oversized_integer_path(body: bytes) -> str | None:
    """The dotted path (``orders.3.orderItems.0.quantity``; ``(root)`` for the body itself) of
    the first integer literal outside the signed 64-bit range in ``body``, else None.

    ``body`` must be valid JSON (decode it first); strings holding long digit runs are not
    integers and are not reported. A body nested too deep to walk answers None: the depth
    limit of intake refuses it anyway.
    """
    if _LONG_DIGITS.search(body) is None:
        return None
    try:
        path = _path_of_oversized(json.loads(body, parse_int=_parse_int), ())
    except RecursionError:
        return None
    if path is None:
        return None
    return ".".join(path) if path else ROOT_FIELD
