"""Cursors of the objects list (``queryMore``), opaque to clients.

They are standard base64, with ``+``, ``/`` and ``=``, like the documented example cursor
(upstream-api.md §3), so a client must URL-encode them (httpx ``params=``). Every cursor
starts with ``+/+/``: sent unencoded, its ``+`` arrives as a space and the cursor is refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

__all__ = ["decode_cursor", "encode_cursor"]

_MAGIC: Final = b"\xfb\xff\xbf"  # encodes as "+/+/"
_PREFIX: Final = b"seq:"


def encode_cursor(seq: int) -> str:
    """The cursor of the page that starts below the order numbered ``seq``."""
    return base64.b64encode(_MAGIC + _PREFIX + str(seq).encode()).decode("ascii")


def decode_cursor(cursor: str) -> int:
    """The ``seq`` that :func:`encode_cursor` encoded in ``cursor``.

    Raises:
        ValueError: ``cursor`` was not made by :func:`encode_cursor`.
    """
    try:
        raw = base64.b64decode(cursor, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    if not raw.startswith(_MAGIC + _PREFIX):
        raise ValueError("not a queryMore cursor")
    return int(raw[len(_MAGIC + _PREFIX) :].decode("ascii"))
