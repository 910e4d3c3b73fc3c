"""The gRPC server shell: interceptors (auth, metrics), health, reflection, limits, TLS.

Domain errors become status codes here and only here (`handle_errors`): `RequestError` carries
its own code, anything else unexpected is INTERNAL (logged), and the server keeps serving.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.metrics import RpcMetrics
from services.rpc.codec import RequestError

log = logging.getLogger("stride.rpc")
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HEALTH_SERVICE = "grpc.health.v1.Health"


def handle_errors(method: Callable) -> Callable:
    """Map exceptions raised by a servicer method to gRPC status codes."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except RequestError as exc:
            context.abort(exc.code, str(exc))
        except Exception as exc:  # a bug, not the client's fault: say so, keep serving
            log.exception("%s failed", method.__qualname__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return wrapper


@dataclass(frozen=True)
class Security:
    """Who may call: a bearer token (checked when set) and TLS (when a cert and key are given)."""

    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @staticmethod
    def from_sources(token_file: Path | None = None, token_env: str = "STRIDE_TOKEN",
                     tls_cert: Path | None = None, tls_key: Path | None = None) -> Security:
        token = token_file.read_text().strip() if token_file else os.environ.get(token_env) or None
        if token_file and not token:
            raise ValueError(f"token file {token_file} is empty")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        return Security(token, tls_cert, tls_key)


def _rpc_kind(handler: grpc.RpcMethodHandler) -> tuple[str, Callable]:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        fn = getattr(handler, kind)
        if fn is not None:
            return kind, fn
    raise ValueError("handler has no behaviour")


def _rebuild(handler: grpc.RpcMethodHandler, kind: str, fn: Callable) -> grpc.RpcMethodHandler:
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(fn, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every RPC but health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        kind, _ = _rpc_kind(handler)
        reason = "missing bearer token" if not given else "invalid bearer token"

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        return _rebuild(handler, kind, deny)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every RPC by final status code and times it."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._m = metrics

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        kind, fn = _rpc_kind(handler)
        method = details.method
        m = self._m

        def code_of(context: grpc.ServicerContext, failed: bool) -> str:
            code = context.code()
            if code is None:
                return "UNKNOWN" if failed else "OK"
            return code.name if hasattr(code, "name") else str(code)

        if kind.endswith("_stream"):  # server streaming: time until the stream is drained

            def streamed(request: Any, context: grpc.ServicerContext) -> Iterable:
                start, failed = time.perf_counter(), True
                try:
                    yield from fn(request, context)
                    failed = False
                finally:
                    m.observe(method, code_of(context, failed), time.perf_counter() - start)

            return _rebuild(handler, kind, streamed)

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            start, failed = time.perf_counter(), True
            try:
                out = fn(request, context)
                failed = False
                return out
            finally:
                m.observe(method, code_of(context, failed), time.perf_counter() - start)

        return _rebuild(handler, kind, unary)


class Server:
    """A started gRPC server with health and reflection; `stop()` drains it gracefully."""

    def __init__(self, register: Callable[[grpc.Server], list[str]], host: str = "127.0.0.1", port: int = 0,
                 security: Security = Security(), metrics: RpcMetrics | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, workers: int = 8) -> None:
        interceptors: list[grpc.ServerInterceptor] = []
        if metrics is not None:
            interceptors.append(MetricsInterceptor(metrics))
        if security.token:
            interceptors.append(AuthInterceptor(security.token))
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors,
                                  options=options)
        names = register(self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], self.server)
        address = f"{host}:{port}"
        if security.tls_cert is not None and security.tls_key is not None:
            creds = grpc.ssl_server_credentials([(security.tls_key.read_bytes(), security.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address} (in use or not permitted)")
        self.host = host
        self._names = names
        self.server.start()
        for name in ["", *names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING (so balancers stop sending), then stop, letting calls finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def channel(address: str, token: str | None = None, tls_ca: Path | None = None,
            max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A client channel with the same message limits, TLS when a CA is given, and the token."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    if tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(address, creds, options=options)
    ch = grpc.insecure_channel(address, options=options)
    if token:
        ch = grpc.intercept_channel(ch, _TokenClientInterceptor(token))
    return ch


class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor,
                              grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token on a plaintext channel (loopback use; gRPC refuses call
    credentials without TLS, so they are added as metadata here)."""

    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: Any) -> Any:
        md = list(d.metadata or []) + [self._md]
        return _Details(d.method, d.timeout, md, d.credentials, getattr(d, "wait_for_ready", None),
                        getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any
