"""JSON responses encoded with orjson, and the upstream's error bodies (upstream-api.md §6).

Every error body is ``{"message": text}``: the documented ``401Response`` shape, which the
stub uses for the other statuses too (their schemas are not visible upstream). Details, such
as the fields a payload got wrong, go inside the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from starlette.responses import Response

__all__ = ["ERROR_MESSAGES", "error_response", "json_response"]

ERROR_MESSAGES: Final = {
    400: "Invalid order payload.",
    401: "Unauthorized",
    404: "Not found.",
    429: "Too Many Requests",
    502: "Bad Gateway: an upstream service returned an unexpected response.",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response; dict keys that are not strings (status codes) become strings."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, detail: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """``{"message": ...}``: the status's documented text, then ``detail`` if given."""
    message = ERROR_MESSAGES.get(status, f"Stub fault {status}")
    if detail:
        message = f"{message.rstrip('.')}: {detail}"
    return json_response(status, {"message": message}, headers)
