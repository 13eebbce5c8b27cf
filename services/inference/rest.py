"""The Open Inference Protocol's REST binding (KServe v2 HTTP/JSON), beside gRPC.

aiohttp on its own thread and event loop, so nothing here touches gRPC's workers; the loop
only reads and writes HTTP, and each inference (parse, engine, encode: blocking work) runs on
a small thread pool through the same data plane as gRPC. Errors are JSON {"error": message}
with the HTTP status the domain error maps to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from gati.errors import GatiError
from services.inference import describe
from services.inference.dataplane import DataPlane, InferCall, InferReply, RequestClock
from services.inference.rest_codec import HEADER_LENGTH, RestRequest, encode_reply, parse_request

log = logging.getLogger(__name__)

HTTP_STATUS = {  # GatiError.code -> HTTP status
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON {"error": ...}; no stack trace or internal detail leaks."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
    except GatiError as exc:
        return error_response(HTTP_STATUS.get(exc.code, 500), str(exc))
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("internal error %s on %s %s", error_id, request.method, request.path)
        return error_response(500, f"internal error (id {error_id}); see server log")


class _Infer:
    """One REST inference: its body, and what encoding needs from parsing."""

    def __init__(self, body: bytes, header_length: str | None) -> None:
        self.body = body
        self.header_length = header_length
        self.request: RestRequest | None = None

    def parse(self) -> InferCall:
        self.request = parse_request(self.body, self.header_length)
        return self.request.call

    def encode(self, reply: InferReply) -> tuple[bytes, dict[str, str]]:
        assert self.request is not None  # the data plane parses before it encodes
        return encode_reply(reply, self.request)


class RestServer:
    """Binds at construction (port 0 picks one: see `port`), serves until `stop`."""

    def __init__(
        self,
        plane: DataPlane,
        host: str,
        port: int,
        workers: int,
        max_body_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.plane = plane
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)  # SO_REUSEADDR, as gRPC
        except OSError as exc:
            raise OSError(f"cannot bind REST {host}:{port}: {exc.strerror}") from exc
        self.port: int = sock.getsockname()[1]
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="gati-rest")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="gati-rest-loop", daemon=True
        )
        self._thread.start()
        try:
            self._runner = self._run(self._serve(sock, max_body_bytes, ssl_context))
        except BaseException:
            sock.close()
            self._end_loop()
            raise

    @property
    def thread(self) -> threading.Thread:
        """The event loop's thread (watched: if it dies, health turns NOT_SERVING)."""
        return self._thread

    def _run(self, coro: Awaitable[Any], timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    async def _serve(
        self, sock: socket.socket, max_body_bytes: int, ssl_context: ssl.SSLContext | None
    ) -> web.AppRunner:
        app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
        app.add_routes(self._routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()  # None: plain HTTP
        return runner

    def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, let in-flight requests finish within `grace` seconds, end."""
        if self.loop.is_closed():
            return
        # aiohttp reads it in cleanup(); its constructor is too early to know the grace
        self._runner._shutdown_timeout = grace
        try:
            self._run(self._runner.cleanup(), timeout=grace + 30)
        finally:  # a cleanup that failed or timed out still frees the pool and the loop
            self.pool.shutdown(wait=True)
            self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()

    def _routes(self) -> list[web.RouteDef]:
        model, version = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
        routes = [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.statistics),  # before {model} matches "stats"
        ]
        for base in (model, version):
            routes += [
                web.get(base, self.metadata),
                web.get(base + "/ready", self.model_ready),
                web.get(base + "/config", self.config),
                web.get(base + "/stats", self.statistics),
                web.post(base + "/infer", self.infer),
            ]
        return routes

    # --- handlers ----------------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        if not self.plane.server_live():
            return error_response(503, "not live: an essential thread of the service stopped")
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        if not self.plane.server_ready():
            return error_response(503, "not ready")
        return web.json_response({"ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(describe.server_metadata())

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.model_metadata(*_model(request)))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        self.plane.engine.get(name, version)  # NotFound: 404 with the reason
        return web.json_response({"name": name, "ready": self.plane.model_ready(name, version)})

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.model_config(*_model(request)))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(self.plane.model_statistics(name, version))

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        body = await request.read()
        clock = RequestClock()  # the whole request is in: queueing starts
        job = _Infer(body, request.headers.get(HEADER_LENGTH))

        def run() -> tuple[bytes, dict[str, str]]:
            clock.start()
            return self.plane.infer(name, version, job.parse, job.encode, clock)

        payload, headers = await self.loop.run_in_executor(self.pool, run)
        return web.Response(body=payload, headers=headers)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info.get("model", ""), request.match_info.get("version", "")
