"""Shared fixtures: one private homehub per test module (own temp dir, database, port).

The hub binary is $HOMEHUB_BIN, else <repo>/target/debug/homehub. When a test fails,
the hub's output is attached to the report as a "hub output" section.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
LISTENING_RE = re.compile(r"homehub listening on https?://127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 5

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
LOCK_KEYS = {"uuid", "serial", "name", "mode", "feature_flags", "config", "state"}


def hub_binary() -> str:
    return os.environ.get("HOMEHUB_BIN") or str(REPO_ROOT / "target" / "debug" / "homehub")


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


class Hub:
    def __init__(self, label: str) -> None:
        self.label = label
        self.dir = tempfile.mkdtemp(prefix=f"homehub-interop-py-{label}-")
        self.db_url = f"sqlite://{self.dir}/homehub.db"
        self.token = f"interop-{secrets.token_hex(12)}"
        self.port: int | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.runs = 0

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """Full WebSocket endpoint (Python clients take it with /websocket)."""
        return f"ws://127.0.0.1:{self.port}/socket/websocket"

    def start(self, port: int = 0) -> None:
        assert self.proc is None, "hub already running"
        binary = hub_binary()
        if not Path(binary).exists():
            raise RuntimeError(f"homehub binary not found at {binary} (cargo build, or set HOMEHUB_BIN)")
        self.runs += 1
        run = self.runs
        args = [binary, "serve", "--bind", f"127.0.0.1:{port}", "--database-url", self.db_url]
        self.log.append(f"[run {run}] $ {' '.join(args)}")
        # Many hubs run at once: the Bester TCP listener (default port 2222) is disabled.
        env = {**os.environ, "HOMEHUB_ADMIN_TOKEN": self.token, "HOMEHUB_BESTER_BIND": ""}
        proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.proc = proc
        found: list[int] = []
        ready = threading.Event()

        def read_stdout() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                self.log.append(f"[run {run} stdout] {line}")
                m = LISTENING_RE.search(line)
                if m and not found:
                    found.append(int(m.group(1)))
                    ready.set()
            ready.set()  # EOF: the process is gone

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(f"[run {run} stderr] {line.rstrip()}")

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        if not found:
            self.kill()
            time.sleep(0.1)
            raise RuntimeError(f"hub did not print its listening line within {START_TIMEOUT_S} s\n{self.output()}")
        if port and found[0] != port:
            raise RuntimeError(f"hub asked to bind port {port} but reports {found[0]}")
        self.port = found[0]

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.log.append(f"hub did not exit within {STOP_TIMEOUT_S} s of SIGTERM; SIGKILL")
                proc.kill()
                proc.wait()
                raise AssertionError("hub did not exit promptly on SIGTERM")
        return proc.returncode

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        port = self.port
        self.stop()
        self.start(port or 0)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)

    def output(self, lines: int = 150) -> str:
        return "\n".join(self.log[-lines:])

    def api(self, method: str, path: str, body: object = None, token: str | None = "") -> tuple[int, object]:
        """Admin API call; returns (status, parsed JSON body or text)."""
        headers = {}
        tok = self.token if token == "" else token
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.http_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                status, raw = res.status, res.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


_hubs_by_module: dict[str, Hub] = {}


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest):
    h = Hub(request.module.__name__.removeprefix("test_"))
    _hubs_by_module[request.module.__name__] = h
    h.start()
    yield h
    h.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        h = _hubs_by_module.get(item.module.__name__) if item.module else None
        if h is not None:
            time.sleep(0.2)  # let the hub's last log lines arrive
            report.sections.append(("hub output", h.output()))


def assert_fresh_lock(resp: object, serial: str) -> None:
    """The documented join/reset reply of a lock seen for the first time."""
    assert isinstance(resp, dict), f"reply is not an object: {resp!r}"
    missing = LOCK_KEYS - resp.keys()
    assert not missing, f"reply lacks {sorted(missing)}: {resp!r}"
    assert isinstance(resp["uuid"], str) and UUID_RE.match(resp["uuid"]), resp
    assert resp["serial"] == serial
    assert resp["name"] == serial
    assert resp["mode"] == 1 and isinstance(resp["mode"], int)
    assert resp["feature_flags"] == ["lock"]
    assert resp["config"] == {}
    assert resp["state"] == {"locked": True}
