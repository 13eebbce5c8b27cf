"""Domain errors raised anywhere in gati; the services map them to gRPC status codes once.

The message always says what was wrong and what was expected, because it goes back to the
client verbatim.
"""

from __future__ import annotations


class GatiError(Exception):
    """Base class; `code` names the gRPC status code it maps to."""

    code = "INTERNAL"


class InvalidArgument(GatiError):
    code = "INVALID_ARGUMENT"


class NotFound(GatiError):
    code = "NOT_FOUND"


class FailedPrecondition(GatiError):
    code = "FAILED_PRECONDITION"


class Unavailable(GatiError):
    code = "UNAVAILABLE"


class ResourceExhausted(GatiError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(GatiError):
    code = "DEADLINE_EXCEEDED"
