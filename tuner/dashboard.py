"""optuna-dashboard on a study's storage, served on 127.0.0.1 only, safe beside a running study.

The dashboard reads through :func:`tuner.storage.open_storage`, so a SQLite file gets the same WAL
journal and busy timeout as the workers that write it: readers never block the writer and a write
lock held by a worker makes the dashboard wait, not fail (the upstream failure where a dashboard
crashed the study it watched came from plain SQLite settings; see optuna/optuna-dashboard#545).
"""

from __future__ import annotations

import socketserver
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.storage import DEFAULT_STORAGE, open_existing_storage

HOST = "127.0.0.1"  # loopback only: the dashboard can edit trials and has no authentication


class DashboardError(RuntimeError):
    """The dashboard cannot start (package missing, port taken); the message says what to do."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection must not keep Ctrl-C from ending it
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base class's name
        pass  # the browser polls every second: one line a request would drown the terminal


def make_dashboard_server(storage: str | None = None, port: int = 8080) -> WSGIServer:
    """A server (not yet serving) of optuna-dashboard for ``storage`` on 127.0.0.1:``port``.

    Example:
        >>> server = make_dashboard_server("sqlite:///tuner.db", port=8080)  # doctest: +SKIP
        >>> server.serve_forever()  # doctest: +SKIP

    Raises:
        DashboardError: optuna-dashboard is not installed, or the port cannot be bound.
        tuner.storage.StorageError: the storage does not exist (a SQLite file is not created).
    """
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise DashboardError(
            "optuna-dashboard is not installed: pip install optuna-dashboard (or reinstall tuner, which depends on it)"
        ) from None
    url = storage or DEFAULT_STORAGE
    app = wsgi(open_existing_storage(url))
    try:
        return make_server(HOST, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as error:
        raise DashboardError(
            f"--port {port}: cannot listen on {HOST}:{port} ({error.strerror or error}); choose another port"
        ) from None


def serve_dashboard(
    storage: str | None = None, port: int = 8080, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve optuna-dashboard for ``storage`` on http://127.0.0.1:``port`` until interrupted."""
    server = make_dashboard_server(storage, port)
    address = f"http://{HOST}:{server.server_port}/dashboard"
    if on_ready is not None:
        on_ready(address)
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["DashboardError", "HOST", "make_dashboard_server", "serve_dashboard"]
