"""Map domain errors to gRPC status codes, in one place.

Servicer methods are wrapped with `grpc_errors`: a `GatiError` becomes its status code with its
message; anything else becomes INTERNAL with a generic message and a logged error id, so no
stack trace or internal detail leaks to clients.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from gati.errors import GatiError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def status_code(exc: GatiError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Abort the RPC with the status an exception maps to (raises)."""
    if isinstance(exc, GatiError):
        context.abort(status_code(exc), str(exc))
    error_id = uuid.uuid4().hex[:12]
    log.exception("internal error %s", error_id, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); see server log")


def grpc_errors(method: F) -> F:
    """Decorator for unary servicer methods: domain errors -> gRPC status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            if context.code() is not None:  # already aborted (e.g. deadline)
                raise
            abort_with(context, exc)

    return wrapper  # type: ignore[return-value]
