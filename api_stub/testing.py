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

from api_stub.config import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, StubConfig
from api_stub.server import StubServer

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

    It has a control port too (:class:`StubControl` finds it), so it can refuse connections.

    Args:
        config: Behaviour of the stub; default ``StubConfig()``.
        port: Port to bind; 0 picks a free one.
        startup_timeout_s: How long to wait for the server to accept connections.
    """
    stub = StubServer(config or StubConfig(), _HOST, port, control_port=0)
    server = stub.server
    thread = threading.Thread(target=stub.run, name="api-stub", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stub server did not start")
            time.sleep(0.01)
        yield f"http://{_HOST}:{stub.port}"
    finally:
        server.should_exit = True
        # Held requests would otherwise keep the server up for their whole hold time.
        server.force_exit = True
        thread.join(timeout=10)
        stub.close()


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
    port, control_port = free_port(), free_port()
    base_url = f"http://{_HOST}:{port}"
    command = [sys.executable, "-m", "api_stub", "--host", _HOST, "--port", str(port)]
    command += ["--control-port", str(control_port)]
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
    """Client of the stub's ``/_stub/`` control API (and a token helper).

    Control calls go to the stub's control port when it has one (asked at construction, or
    given as ``control_url``), so they still work while the public port refuses connections.
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 10.0, control_url: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Idle connections are dropped well before uvicorn's 5 s keep-alive closes them.
        limits = httpx.Limits(keepalive_expiry=1.0)
        self._public = httpx.Client(base_url=self.base_url, timeout=timeout_s, limits=limits)
        self._timeout_s, self._limits = timeout_s, limits
        self._control_url = control_url.rstrip("/") if control_url else None
        self._client_: httpx.Client | None = None

    @property
    def control_url(self) -> str:
        """Where control calls go: the control port if the stub has one, else ``base_url``."""
        if self._control_url is None:
            self._control_url = self.base_url
            try:
                control = self._public.get("/_stub/listeners").json()["control"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                control = None  # an older stub, or not up yet: the public port serves control
            if control is not None:
                self._control_url = f"http://{control['host']}:{control['port']}"
        return self._control_url

    @property
    def _client(self) -> httpx.Client:
        if self._client_ is None:
            self._client_ = httpx.Client(
                base_url=self.control_url, timeout=self._timeout_s, limits=self._limits
            )
        return self._client_

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
        mode: str | None = None,
    ) -> dict[str, Any]:
        """Limit ``/api`` calls in flight to ``capacity`` (0: no limit); return the config.

        Args:
            capacity: Most calls served at once.
            over_capacity_status: 429 or 503; unchanged if ``None``.
            retry_after_s: ``Retry-After`` of a refusal (0: none); unchanged if ``None``.
            mode: ``"refuse"`` (answer the status at once) or ``"queue"`` (wait inside the
                stub: latency grows, nothing refused); unchanged if ``None``.
        """
        fields: dict[str, Any] = {"capacity": capacity}
        if over_capacity_status is not None:
            fields["over_capacity_status"] = over_capacity_status
        if retry_after_s is not None:
            fields["capacity_retry_after_s"] = retry_after_s
        if mode is not None:
            fields["capacity_mode"] = mode
        return self.configure(**fields)

    def set_outage(self, on: bool = True, *, mode: str = "502") -> dict[str, Any]:
        """Switch an outage on or off now; return the config.

        ``mode="502"``: every path but the token and control answers 502; ``"refuse"``: the
        public port refuses connections. ``on=False`` ends either.
        """
        if not on:
            return self.configure(outage=False, refuse_connections=False)
        return self.configure(outage=mode == "502", refuse_connections=mode == "refuse")

    def outage(
        self, mode: str = "502", *, for_s: float | None = None, after_calls: int = 0
    ) -> dict[str, Any]:
        """Begin an outage now or after ``after_calls`` more calls, for ``for_s`` seconds.

        Returns the outage record (``stats()["outage"]``) and ``"config"``.
        """
        body = {"mode": mode, "for_s": for_s, "after_calls": after_calls}
        return dict(self._call("POST", "/_stub/outage", body))

    def end_outage(self) -> dict[str, Any]:
        """End any outage now, and cancel a scheduled one."""
        return dict(self._call("DELETE", "/_stub/outage"))

    def set_order_list(self, on: bool) -> dict[str, Any]:
        """Offer ``GET /api/objects/limio/orders`` or not (404); return the config."""
        return self.configure(order_list=on)

    def listeners(self) -> dict[str, Any]:
        """``{"public": {"host", "port", "open"}, "control": {"host", "port"}}``."""
        return dict(self._call("GET", "/_stub/listeners"))

    def set_latency(
        self,
        latency_ms: float | None = None,
        *,
        per_in_flight_ms: float | None = None,
        jitter_sigma: float | None = None,
    ) -> dict[str, Any]:
        """Set the median latency, its growth per call in flight and its log-normal jitter;
        ``None`` leaves one as is. New calls take it at once."""
        fields: dict[str, Any] = {}
        if latency_ms is not None:
            fields["latency_ms"] = latency_ms
        if per_in_flight_ms is not None:
            fields["latency_per_in_flight_ms"] = per_in_flight_ms
        if jitter_sigma is not None:
            fields["jitter_sigma"] = jitter_sigma
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
        response = self._public.post("/oauth2/token", data=form | {"client_secret": client_secret})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def close(self) -> None:
        """Close the HTTP clients."""
        if self._client_ is not None:
            self._client_.close()
        self._public.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
