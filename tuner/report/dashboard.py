"""optuna-dashboard on a study's storage, served on 127.0.0.1 only, safe beside a running study.

optuna-dashboard has no login and can delete studies and edit trials, so the app is wrapped
(:func:`guard_local_requests`): it answers only requests addressed to ``127.0.0.1`` or
``localhost`` on its own port (a page of another site that rebinds its DNS name to 127.0.0.1
sends its own name as ``Host``), and a request that changes something (POST, PUT, PATCH,
DELETE) only from a page of the dashboard itself (its ``Origin``, else ``Referer``), so that no
other page a browser shows, another local user's included, can make it delete a study. With
``read_only`` every such request is refused.

The dashboard reads through :func:`tuner.storage.open_existing_storage`: a SQLite file is opened
read-only with ``read_only`` or where it cannot be written (so a read-only file can be shown),
with the same busy timeout as the workers that write it: readers never block the writer and a write lock held by
a worker makes the dashboard wait, not fail (the upstream failure where a dashboard crashed the
study it watched came from plain SQLite settings; see optuna/optuna-dashboard#545).
"""

from __future__ import annotations

import socketserver
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.storage import open_existing_storage, resolve_url

HOST = "127.0.0.1"  # loopback only: the dashboard can edit trials and has no authentication
LOCAL_HOST_NAMES = ("127.0.0.1", "localhost")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # the rest change the storage

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class DashboardError(RuntimeError):
    """The dashboard cannot start (package missing, port taken); the message says what to do."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection must not keep Ctrl-C from ending it
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base class's name
        pass  # the browser polls every second: one line a request would drown the terminal


def _is_local(netloc: str, port: int) -> bool:
    """``netloc`` (a Host header, or an origin's host[:port]) names this server: a loopback name, and our port."""
    name, colon, given = netloc.strip().lower().rpartition(":")
    if not colon:
        name, given = netloc.strip().lower(), ""
    return name in LOCAL_HOST_NAMES and (given == str(port) or (given == "" and port == 80))


def _origin_of(environ: dict[str, Any]) -> str | None:
    """scheme://host[:port] of the page that sent the request: its Origin header, else its Referer's."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None and environ.get("HTTP_REFERER"):
        parts = urlsplit(environ["HTTP_REFERER"])
        origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
    return origin


def _forbidden(start_response: Callable[..., Any], why: str) -> list[bytes]:
    body = f"403 Forbidden: {why}\n".encode()
    start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def guard_local_requests(app: WSGIApp, port: int, *, read_only: bool = False) -> WSGIApp:
    """Wrap a WSGI app served on 127.0.0.1:``port`` so that only the local browser's own pages use it.

    Refused with 403: a ``Host`` other than ``127.0.0.1`` or ``localhost`` on ``port`` (DNS rebinding);
    a POST, PUT, PATCH or DELETE whose ``Origin`` (else ``Referer``) is not this same local origin
    (another site's page, or another local user's, forging a request), or any of them with ``read_only``.

    Example:
        >>> from optuna_dashboard import wsgi  # doctest: +SKIP
        >>> app = guard_local_requests(wsgi("sqlite:///tuner.db"), 8080)  # doctest: +SKIP
    """

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        if not _is_local(host, port):
            return _forbidden(start_response, f"this dashboard answers only http://{HOST}:{port} or http://localhost:{port}")
        if environ.get("REQUEST_METHOD", "GET").upper() not in SAFE_METHODS:
            if read_only:
                return _forbidden(start_response, "the dashboard is read-only (tuner dashboard --read-only)")
            origin = _origin_of(environ)
            parts = urlsplit(origin) if origin else None
            if parts is None or parts.scheme != "http" or not _is_local(parts.netloc, port) or parts.netloc.lower() != host.lower():
                return _forbidden(start_response, "a change must come from a page of this dashboard (Origin or Referer)")
        return app(environ, start_response)

    return guarded


def make_dashboard_server(storage: str | None = None, port: int = 8080, *, read_only: bool = False) -> WSGIServer:
    """A server (not yet serving) of optuna-dashboard for ``storage`` on 127.0.0.1:``port``.

    Only the local browser's own pages are answered (see :func:`guard_local_requests`); with
    ``read_only``, nothing can be changed through it.

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
    app = wsgi(open_existing_storage(resolve_url(storage), writable=not read_only))
    try:
        server = make_server(HOST, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as error:
        raise DashboardError(
            f"--port {port}: cannot listen on {HOST}:{port} ({error.strerror or error}); choose another port"
        ) from None
    server.set_app(guard_local_requests(app, server.server_port, read_only=read_only))  # the port bound (port 0: any)
    return server


def serve_dashboard(
    storage: str | None = None, port: int = 8080, on_ready: Callable[[str], None] | None = None, *, read_only: bool = False
) -> None:
    """Serve optuna-dashboard for ``storage`` on http://127.0.0.1:``port`` until interrupted."""
    server = make_dashboard_server(storage, port, read_only=read_only)
    address = f"http://{HOST}:{server.server_port}/dashboard"
    if on_ready is not None:
        on_ready(address)
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["DashboardError", "HOST", "guard_local_requests", "make_dashboard_server", "serve_dashboard"]
