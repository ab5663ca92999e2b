"""Run the stub from tests and benchmarks, and drive its control API.

* :func:`running_stub`: in a background thread of this process (fast to start; shares
  the GIL with the test).
* :func:`stub_process`: as ``python -m api_stub`` in a child process (for load).
* :class:`StubControl`: a small client of the ``/_stub/`` control API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import uvicorn

from api_stub.app import create_app
from api_stub.config import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, StubConfig
from api_stub.server import server_config

__all__ = ["StubControl", "free_port", "running_stub", "stub_process"]

_HOST = "127.0.0.1"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_stub(
    config: StubConfig | None = None, port: int = 0, *, startup_timeout_s: float = 10.0
) -> Iterator[str]:
    """Serve the stub in a background thread; yield its base URL (``http://127.0.0.1:P``).

    Args:
        config: Behaviour of the stub; default ``StubConfig()``.
        port: Port to bind; 0 picks a free one.
        startup_timeout_s: How long to wait for the server to accept connections.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((_HOST, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(config), _HOST, bound_port))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="api-stub", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stub server did not start")
            time.sleep(0.01)
        yield f"http://{_HOST}:{bound_port}"
    finally:
        server.should_exit = True
        # Held requests would otherwise keep the server up for their whole hold time.
        server.force_exit = True
        thread.join(timeout=10)
        sock.close()


def _wait_until_up(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the stub process exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/_stub/config", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the stub process did not answer within {timeout_s} s")


@contextmanager
def stub_process(
    config_args: list[str] | None = None, *, startup_timeout_s: float = 15.0
) -> Iterator[str]:
    """Run ``python -m api_stub`` on a free port; yield its base URL; stop it at exit.

    Args:
        config_args: Extra command-line options, e.g. ``["--latency-ms", "20"]``.
        startup_timeout_s: How long to wait for the first answer.

    Raises:
        RuntimeError: The process exited or did not answer in time (its stderr attached).
    """
    port = free_port()
    base_url = f"http://{_HOST}:{port}"
    command = [sys.executable, "-m", "api_stub", "--host", _HOST, "--port", str(port)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [*command, *(config_args or [])], stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
        try:
            try:
                _wait_until_up(base_url, proc, startup_timeout_s)
            except RuntimeError as exc:
                stderr.seek(0)
                raise RuntimeError(f"{exc}\n{stderr.read().decode(errors='replace')}") from None
            yield base_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class StubControl:
    """Client of the stub's ``/_stub/`` control API (and a token helper)."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        # Idle connections are dropped well before uvicorn's 5 s keep-alive closes them.
        limits = httpx.Limits(keepalive_expiry=1.0)
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s, limits=limits)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except (httpx.RemoteProtocolError, httpx.ConnectError):
            # A pooled connection the busy stub had closed as we reused it: the request was not
            # read, so it is sent once more on a fresh connection.
            response = self._client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def config(self) -> dict[str, Any]:
        """The current config."""
        return dict(self._call("GET", "/_stub/config"))

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change some config fields (e.g. ``latency_ms=20``); return the new config."""
        return dict(self._call("PUT", "/_stub/config", fields))

    def script(
        self, endpoint: str, faults: list[dict[str, Any]], *, replace: bool = False
    ) -> dict[str, Any]:
        """Queue faults for ``endpoint`` (token, preview, submit, object, list or any).

        Example: ``script("submit", [{"status": 502, "times": 3}, {"kind": "ambiguous"}])``.
        Returns ``{"pending": {endpoint: [{"fault": "502", "times": 3}, ...]}}``.
        """
        body = {"endpoint": endpoint, "faults": faults, "replace": replace}
        return dict(self._call("POST", "/_stub/script", body))

    def clear_script(self) -> None:
        """Drop every queued fault (the stub answers normally again)."""
        self._call("DELETE", "/_stub/script")

    def orders(self) -> dict[str, Any]:
        """``{"count", "orders", "duplicates"}``: every order the stub created."""
        return dict(self._call("GET", "/_stub/orders"))

    def stats(self) -> dict[str, Any]:
        """Counters: tokens, requests per endpoint, faults per kind, 401s, rejections, load.

        Load keys: ``in_flight``, ``peak_in_flight``, ``refused`` (``{"429": n}``) and
        ``outage_requests`` (``{endpoint: n}``); see :mod:`api_stub.control` for the rest.
        """
        return dict(self._call("GET", "/_stub/stats"))

    def reset_stats(self) -> dict[str, Any]:
        """Zero the counters and restart the in-flight peak; return the fresh stats."""
        return dict(self._call("POST", "/_stub/stats/reset"))

    def set_capacity(
        self,
        capacity: int,
        *,
        over_capacity_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> dict[str, Any]:
        """Refuse ``/api`` calls beyond ``capacity`` in flight (0: no limit); return the config.

        Args:
            capacity: Most calls in flight at once.
            over_capacity_status: 429 or 503; unchanged if ``None``.
            retry_after_s: ``Retry-After`` of a refusal (0: none); unchanged if ``None``.
        """
        fields: dict[str, Any] = {"capacity": capacity}
        if over_capacity_status is not None:
            fields["over_capacity_status"] = over_capacity_status
        if retry_after_s is not None:
            fields["capacity_retry_after_s"] = retry_after_s
        return self.configure(**fields)

    def set_outage(self, on: bool = True) -> dict[str, Any]:
        """Switch the outage on (every ``/api`` call answers 502) or off; return the config."""
        return self.configure(outage=on)

    def set_latency(
        self, latency_ms: float | None = None, *, per_in_flight_ms: float | None = None
    ) -> dict[str, Any]:
        """Set the base latency and its growth per call in flight; ``None`` leaves one as is."""
        fields: dict[str, Any] = {}
        if latency_ms is not None:
            fields["latency_ms"] = latency_ms
        if per_in_flight_ms is not None:
            fields["latency_per_in_flight_ms"] = per_in_flight_ms
        return self.configure(**fields)

    def reset(self, config: dict[str, Any] | None = None) -> None:
        """Forget orders, tokens, script and counters; replace the config if given."""
        self._call("POST", "/_stub/reset", {} if config is None else {"config": config})

    def expire_tokens(self) -> int:
        """Expire every issued token now; return how many were still valid."""
        return int(self._call("POST", "/_stub/tokens/expire")["expired"])

    def token(
        self, client_id: str = DEMO_CLIENT_ID, client_secret: str = DEMO_CLIENT_SECRET
    ) -> str:
        """Obtain an access token with client credentials (form body)."""
        form = {"grant_type": "client_credentials", "client_id": client_id}
        response = self._client.post("/oauth2/token", data=form | {"client_secret": client_secret})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
