"""Small ASGI and Starlette helpers that know nothing of the service: a request header from the scope, and a JSON
response serialized once by orjson."""

from typing import Any, cast

import orjson
from starlette.responses import Response
from starlette.types import Scope


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header `name` (lower-case bytes), if present."""
    for key, value in scope["headers"]:
        if key == name:
            return cast(bytes, value)  # the ASGI spec: header names and values are bytes
    return None


class JsonResponse(Response):
    """A JSON response serialized once, by orjson, from plain data: no model validation on the way out."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
