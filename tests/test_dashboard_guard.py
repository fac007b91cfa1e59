"""The dashboard serves only the local browser's own pages: DNS rebinding (another Host) and forged
changes (a DELETE from another site's page, or another local user's) are refused with 403.

optuna-dashboard is called as a WSGI app with handmade requests (no network), and once through
`tuner dashboard` on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna_dashboard import wsgi

from tuner.report.dashboard import guard_local_requests
from tuner.storage import open_storage

PORT = 8080


def _request(app: Any, method: str, path: str, **headers: str) -> tuple[int, bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(b""),
                               "CONTENT_LENGTH": "0", "SERVER_PORT": str(PORT)}
    environ.update({f"HTTP_{key.upper()}": value for key, value in headers.items()})
    setup_testing_defaults(environ)  # fills in only what is missing: our Host (or its absence) stays
    if "host" not in headers:
        environ.pop("HTTP_HOST", None)
    status: list[str] = []
    body = b"".join(app(environ, lambda line, _headers, _exc=None: status.append(line)))
    return int(status[0].split()[0]), body


@pytest.fixture
def storage(tmp_path: Path) -> tuple[str, int]:
    """A SQLite storage with one study; its URL and the study's id."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="kept/lr", storage=open_storage(url))
    return url, study._study_id  # noqa: SLF001 -- the id the dashboard's API takes


def _names(url: str) -> list[str]:
    return optuna.get_all_study_names(open_storage(url))


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:8080", 200), ("localhost:8080", 200), ("LOCALHOST:8080", 200),
    ("evil.example:8080", 403), ("evil.example", 403), ("127.0.0.1:9999", 403), ("127.0.0.1", 403),
    ("localhost.evil.example:8080", 403), ("[::1]:8080", 403), (None, 403),
])
def test_only_requests_addressed_to_the_local_dashboard_are_answered(storage: tuple[str, int], host: str | None, status: int) -> None:
    app = guard_local_requests(wsgi(open_storage(storage[0])), PORT)
    headers = {"host": host} if host is not None else {}
    code, body = _request(app, "GET", "/api/studies", **headers)
    assert code == status, body
    if status == 403:
        assert b"answers only http://127.0.0.1:8080" in body


@pytest.mark.parametrize("headers", [
    pytest.param({"origin": "http://evil.example"}, id="another-site"),
    pytest.param({"origin": "http://127.0.0.1:9999"}, id="another-local-port"),
    pytest.param({"origin": "null"}, id="sandboxed-page"),
    pytest.param({"referer": "http://evil.example/page"}, id="another-site-by-referer"),
    pytest.param({}, id="no-origin-at-all"),
])
@pytest.mark.parametrize("method", ["DELETE", "POST", "PUT", "PATCH"])
def test_a_change_from_another_origin_is_refused_and_nothing_changes(
    storage: tuple[str, int], headers: dict[str, str], method: str,
) -> None:
    url, study_id = storage
    app = guard_local_requests(wsgi(open_storage(url)), PORT)
    code, body = _request(app, method, f"/api/studies/{study_id}", host="127.0.0.1:8080", **headers)
    assert code == 403, body
    assert b"must come from a page of this dashboard" in body
    assert _names(url) == ["kept/lr"]


@pytest.mark.parametrize("headers", [
    pytest.param({"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"}, id="origin"),
    pytest.param({"host": "localhost:8080", "referer": "http://localhost:8080/dashboard/studies/1"}, id="referer"),
])
def test_the_dashboards_own_page_can_still_delete_a_study(storage: tuple[str, int], headers: dict[str, str]) -> None:
    url, study_id = storage
    code, body = _request(guard_local_requests(wsgi(open_storage(url)), PORT), "DELETE", f"/api/studies/{study_id}", **headers)
    assert code < 300, body  # the guard is not in the way of the dashboard itself
    assert _names(url) == []


def test_read_only_refuses_every_change_even_from_the_dashboards_own_page(storage: tuple[str, int]) -> None:
    url, study_id = storage
    app = guard_local_requests(wsgi(open_storage(url)), PORT, read_only=True)
    code, body = _request(app, "DELETE", f"/api/studies/{study_id}", host="127.0.0.1:8080", origin="http://127.0.0.1:8080")
    assert code == 403 and b"read-only" in body
    assert _request(app, "GET", "/api/studies", host="127.0.0.1:8080")[0] == 200
    assert _names(url) == ["kept/lr"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(url: str, method: str = "GET", **headers: str) -> int:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("read_only", [False, True])
def test_tuner_dashboard_refuses_a_rebound_host_and_a_forged_delete(tmp_path: Path, storage: tuple[str, int], read_only: bool) -> None:
    url, study_id = storage
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    flags = ["--read-only"] if read_only else []
    log = tmp_path / "dashboard.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "tuner.cli", "dashboard", "--storage", url, "--port", str(port), *flags],
                                  stdout=sink, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _status(f"{base}/api/meta") == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert _status(f"{base}/api/studies", Host=f"rebound.example:{port}") == 403
        assert _status(f"{base}/api/studies/{study_id}", "DELETE", Origin="http://evil.example") == 403
        assert _names(url) == ["kept/lr"]
        own = _status(f"{base}/api/studies/{study_id}", "DELETE", Origin=f"http://127.0.0.1:{port}")
        assert (own == 403) if read_only else (own < 300)
        assert _names(url) == (["kept/lr"] if read_only else [])
    finally:
        server.terminate()
        server.wait(timeout=30)
    banner = log.read_text()
    assert ("(read-only)" in banner) == read_only, banner
