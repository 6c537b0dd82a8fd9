"""The common part of the fake provider servers: a real HTTP server on 127.0.0.1, a request log, fault injection.

Each fake runs a ThreadingHTTPServer in a daemon thread, so it answers in-process httpx clients and child
processes alike (`python -m gpurun train ...`, the watchdog script on an "instance"). Faults are queued and
consumed in order by the first request they match: a 429 with Retry-After, a 5xx, a slow answer.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class RecordedRequest:
    """One request as the fake saw it (headers lower-cased; body parsed as JSON when it is JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    #: which credential authorised it: "account", "instance:<id>", "query-param", or None (rejected)
    auth: str | None = None
    #: GraphQL root field, for GraphQL requests
    graphql_field: str | None = None
    status: int = 0
    at: float = field(default_factory=time.time)


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body)
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class Fault:
    status: int
    remaining: int
    path: str | None = None
    method: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"
    delay: float = 0.0
    #: sleep after the request was processed (a lost answer) rather than before
    delay_after: bool = False

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path in path)


class FakeServer:
    """Base class: subclasses implement `route(request) -> Response`, and call `authorise` themselves."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        #: called with every SSH public key that reaches a machine (what the image's sshd would authorise);
        #: tests point it at the sshd fixture: `fake.key_sinks.append(sshd_server.authorize)`
        self.key_sinks: list[Callable[[str], None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # one buffered write per answer, no Nagle: otherwise each answer waits ~40 ms for a delayed ACK
            wbufsize = -1
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                server._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client that hangs up (a closed keep-alive connection, a cancelled request) is normal here;
                # anything else is still printed
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._httpd = QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )

    def deliver_key(self, public_key: str | None) -> None:
        """A machine got this key (env var, account key): hand it to the sinks, as the image's startup would."""
        if public_key and public_key.strip():
            for sink in list(self.key_sinks):
                sink(public_key.strip())

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection -----------------------------------------------------------------------------------
    def inject_rate_limit(
        self,
        times: int = 1,
        *,
        retry_after: str | float | None = "1",
        path: str | None = None,
        method: str | None = None,
        body: Any = "API requests too frequent endpoint threshold=4.5",
    ) -> None:
        """The next `times` matching requests get 429, with `Retry-After` (seconds or an HTTP date) if given."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        kind = "text/plain" if isinstance(body, str) else "application/json"
        with self.lock:
            self._faults.append(Fault(429, times, path, method, body, headers, kind))

    def inject_server_error(
        self, times: int = 1, *, status: int = 503, path: str | None = None, method: str | None = None
    ) -> None:
        """The next `times` matching requests get a 5xx (an HTML-ish body, as load balancers send)."""
        with self.lock:
            self._faults.append(Fault(status, times, path, method, f"<html>{status} upstream error</html>"))

    def inject_answer(
        self,
        status: int,
        body: Any,
        *,
        times: int = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """The next `times` matching requests get this exact answer: a hostile or malformed vendor body."""
        kind = "text/plain" if isinstance(body, (str, bytes)) else "application/json"
        with self.lock:
            self._faults.append(Fault(status, times, path, method, body, {}, kind))

    def clear_faults(self) -> None:
        """Forget every queued fault: the next requests are answered normally."""
        with self.lock:
            self._faults.clear()

    def inject_delay(
        self,
        seconds: float,
        times: int = 1,
        *,
        path: str | None = None,
        method: str | None = None,
        after_processing: bool = False,
    ) -> None:
        """The next `times` matching requests are answered normally, but only after `seconds` (for timeouts).

        With `after_processing` the request takes effect first and only the answer is late: what a client
        sees when a create succeeded but its response was lost.
        """
        with self.lock:
            self._faults.append(Fault(0, times, path, method, delay=seconds, delay_after=after_processing))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    # -- request handling ----------------------------------------------------------------------------------
    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, optionally only those with this method and a path containing `path`."""
        with self.lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and (path is None or path in r.path)
            ]

    def bearer(self, request: RecordedRequest) -> str | None:
        value = request.headers.get("authorization", "")
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            raw_body=raw,
        )
        with self.lock:
            self.requests.append(request)
        fault = self._take_fault(request.method, request.path)
        if fault is not None and fault.delay and not fault.delay_after:
            time.sleep(fault.delay)
        if fault is not None and fault.status:
            response = Response(fault.status, fault.body, dict(fault.headers), fault.content_type)
        else:
            try:
                response = self.route(request)
            except Exception as exc:  # a bug in the fake must show up as a 500, not hang the client
                response = Response(500, {"error": "fake_server_bug", "msg": f"{type(exc).__name__}: {exc}"})
        if fault is not None and fault.delay and fault.delay_after:
            time.sleep(fault.delay)
        request.status = response.status
        payload = response.encode()
        try:
            handler.send_response(response.status)
            if payload or response.status not in (204, 304):
                handler.send_header("Content-Type", response.content_type)
            if "Content-Length" not in response.headers:  # a HEAD answer states the size of what GET would send
                handler.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if payload:
                handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def route(self, request: RecordedRequest) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError
