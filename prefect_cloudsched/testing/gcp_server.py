"""A small fake Google Compute Engine REST API that the real ``google-cloud-compute`` talks to.

There is no official Compute emulator, so tests and the demo run this instead: a stdlib HTTP
server on 127.0.0.1 that answers the instance, zone-operation and machine-type calls our
provisioner makes, with GCE's JSON shapes and errors, plus hooks to inject stockouts, quota
errors, throttling and spot preemptions. Point the client at it with
``ClientOptions(api_endpoint=fake.url)``, ``AnonymousCredentials()`` and ``transport="rest"``
(:meth:`FakeGcpCompute.client_kwargs` builds exactly that).

Run standalone with ``python -m prefect_cloudsched.testing.gcp_server --port N``; other
processes then drive the hooks over HTTP under ``/_fake/``. See docs/mock-clouds-gcp.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prefect_cloudsched.testing._gcp_api import KNOWN_ZONES, GceError, Json, invalid_field
from prefect_cloudsched.testing._gcp_state import GcpState, RecordedRequest

__all__ = ["FakeGcpCompute", "GceError", "GcpState", "RecordedRequest", "main"]

_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_Z = _P + r"/zones/(?P<zone>[^/]+)"
_I = _Z + r"/instances/(?P<name>[^/]+)"
_OP = _Z + r"/operations/(?P<name>[^/]+)"

_MAINTENANCE = _I + "/simulateMaintenanceEvent"
_AGGREGATED = _P + "/aggregated/instances"
_MACHINE_TYPES = _Z + "/machineTypes"

#: (HTTP verb, path regex, GCE API method id, handler) — paths as the client sends them.
_ROUTE_TABLE: list[tuple[str, str, str, Callable[..., Json]]] = [
    ("POST", _Z + "/instances", "instances.insert", GcpState.insert_instance),
    ("GET", _Z + "/instances", "instances.list", GcpState.list_instances),
    ("GET", _I, "instances.get", GcpState.get_instance),
    ("DELETE", _I, "instances.delete", GcpState.delete_instance),
    ("POST", _I + "/stop", "instances.stop", GcpState.stop_instance),
    ("POST", _I + "/start", "instances.start", GcpState.start_instance),
    ("POST", _MAINTENANCE, "instances.simulateMaintenanceEvent", GcpState.simulate_maintenance),
    ("POST", _I + "/setLabels", "instances.setLabels", GcpState.set_labels),
    ("GET", _AGGREGATED, "instances.aggregatedList", GcpState.aggregated_instances),
    ("GET", _OP, "zoneOperations.get", GcpState.poll_operation),
    ("POST", _OP + "/wait", "zoneOperations.wait", GcpState.poll_operation),
    ("GET", _Z + "/operations", "zoneOperations.list", GcpState.list_operations),
    ("GET", _MACHINE_TYPES + "/(?P<name>[^/]+)", "machineTypes.get", GcpState.get_machine_type),
    ("GET", _MACHINE_TYPES, "machineTypes.list", GcpState.list_machine_types),
]
_ROUTES: list[tuple[str, re.Pattern[str], str, Callable[..., Json]]] = [
    (verb, re.compile(path), method_id, handler) for verb, path, method_id, handler in _ROUTE_TABLE
]


def _set_polls(state: GcpState, op_polls_before_done: int) -> Json:
    state.op_polls_before_done = int(op_polls_before_done)
    return {}


#: ``/_fake/...`` hooks: (verb, name) -> call with the JSON body as keyword arguments.
_HOOKS: dict[tuple[str, str], Callable[..., Any]] = {
    ("POST", "preempt"): GcpState.preempt,
    ("POST", "reset"): GcpState.reset,
    ("POST", "stockout"): GcpState.stockout_next,
    ("POST", "quota"): GcpState.quota_next,
    ("POST", "fail"): GcpState.fail_next,
    ("POST", "images"): GcpState.add_image,
    ("POST", "config"): _set_polls,
    ("GET", "instances"): lambda state: {"items": state.instances()},
    ("GET", "requests"): lambda state: {"items": [asdict(r) for r in state.requests]},
}


class _Server(ThreadingHTTPServer):
    """Knows its state and its open connections, so ``stop()`` can close idle keep-alives."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: GcpState, quiet: bool) -> None:
        super().__init__(address, _Handler)
        self.state, self.quiet = state, quiet
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _serve(self) -> None:
        # Read the whole body first on every path: unread bytes would be parsed as the next
        # request on this keep-alive connection.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(411, GceError(411, "Length Required: send Content-Length.").body())
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            status, body = 200, self._dispatch(unquote(url.path), query, raw)
        except GceError as exc:
            status, body = exc.code, exc.body()
        except Exception as exc:  # a bug in the fake: answer it rather than drop the socket
            status, body = 500, GceError(500, f"Fake GCE server error: {exc!r}").body()
        self._send(status, body)

    def _dispatch(self, path: str, query: dict[str, str], raw: bytes) -> Json:
        state = self.server.state
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        if path.startswith("/_fake/"):
            return self._hook(path.removeprefix("/_fake/"), body)
        state.record(
            self.command, path, query, raw.decode(errors="replace") if body is None else body
        )
        for verb, pattern, method_id, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None or verb != self.command:
                continue
            if not isinstance(body, dict):
                raise GceError(400, "Invalid JSON payload received.", "parseError")
            if (injected := state.take_failure(method_id)) is not None:
                raise injected
            params = match.groupdict()
            if "zone" in params and params["zone"] not in KNOWN_ZONES:
                raise invalid_field("zone", params["zone"], "Unknown zone.")
            return handler(state, **params, query=query, body=body)
        raise GceError(
            501, f"The fake GCE server does not implement {self.command} {path}", "notImplemented"
        )

    def _hook(self, name: str, body: Any) -> Json:
        hook = _HOOKS.get((self.command, name))
        if hook is None:
            raise GceError(404, f"No fake hook {self.command} /_fake/{name}")
        if not isinstance(body, dict):
            raise GceError(400, "Invalid JSON payload received.", "parseError")
        try:
            return hook(self.server.state, **body) or {}
        except (TypeError, ValueError, KeyError) as exc:
            raise GceError(400, f"Bad arguments for /_fake/{name}: {exc}") from exc

    def _send(self, status: int, body: Json) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class FakeGcpCompute:
    """The fake GCE server: ``start()`` it (or use ``with``), point clients at ``url``.

    ``state`` holds the instances and operations and offers the test hooks
    (``fail_next``, ``stockout_next``, ``quota_next``, ``preempt``, ``add_image``,
    ``op_polls_before_done``, ``reset``, ``instances()``, ``requests``).
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, quiet: bool = True) -> None:
        self.state = GcpState()
        self._address = (host, port)
        self._quiet = quiet
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeGcpCompute:
        """Bind (a free port unless one was given) and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeGcpCompute is already running")
        self._server = _Server(self._address, self.state, self._quiet)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fake-gce-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and free the port; safe to call twice."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)

    @property
    def url(self) -> str:
        """The endpoint for ``ClientOptions(api_endpoint=...)``, e.g. http://127.0.0.1:PORT."""
        if self._server is None:
            raise RuntimeError("FakeGcpCompute is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that point any ``compute_v1`` client at this fake."""
        from google.auth.credentials import AnonymousCredentials

        return {
            "client_options": {"api_endpoint": self.url},
            "credentials": AnonymousCredentials(),
            "transport": "rest",
        }

    def insert_foreign_instance(
        self, project: str, zone: str, name: str, labels: Mapping[str, str]
    ) -> None:
        """Create a small VM through the real client, as someone other than our provisioner.

        Tests use it to prove the reaper and ``release_run`` leave such instances alone.
        """
        from google.cloud import compute_v1

        compute_v1.InstancesClient(**self.client_kwargs()).insert_unary(
            project=project,
            zone=zone,
            instance_resource=compute_v1.Instance(
                name=name,
                machine_type=f"zones/{zone}/machineTypes/e2-small",
                labels=dict(labels),
                disks=[
                    compute_v1.AttachedDisk(
                        boot=True,
                        initialize_params=compute_v1.AttachedDiskInitializeParams(
                            source_image="projects/debian-cloud/global/images/family/debian-12"
                        ),
                    )
                ],
            ),
        )

    def __enter__(self) -> FakeGcpCompute:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; prints the URL (alone on one line) once listening."""
    parser = argparse.ArgumentParser(description="Fake Google Compute Engine REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--op-polls-before-done",
        type=int,
        default=0,
        help="polls (get/wait) an operation reports RUNNING before DONE",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    fake = FakeGcpCompute(args.port, args.host, quiet=not args.verbose).start()
    fake.state.op_polls_before_done = args.op_polls_before_done
    print(fake.url, flush=True)
    try:
        stop.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
