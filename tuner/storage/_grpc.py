"""``grpc://host:port``: a study through Optuna's gRPC storage proxy, and serving that proxy.

One proxy (``tuner storage-proxy``) holds the database's connections; workers talk gRPC to it
(Optuna's ``GrpcStorageProxy``), so hundreds of them do not each open connections to the database.

What the proxy carries, and what not: every call of Optuna's ``BaseStorage`` (studies, trials,
their attributes), but not Optuna's heartbeats (``GrpcStorageProxy`` has no ``record_heartbeat``).
The liveness of a trial therefore goes by tuner's own marks, which are trial attributes and so
travel through the proxy like any other: the owner (host, pid, start time) for a dead worker on
the same machine, and the beat counter for one elsewhere (see :mod:`tuner.storage.liveness`).

grpcio is an optional extra (``pip install 'tuner[grpc]'``): it is imported only for a
``grpc://`` URL or the proxy command.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage, GrpcStorageProxy

from tuner.storage import _optuna
from tuner.storage._url import StorageError, redact

SCHEME = "grpc://"
DEFAULT_PORT = 13000  # Optuna's default for run_grpc_proxy_server
BEHIND_PROXY = "the database behind the storage proxy"  # how the proxy says its database did not answer
PROXY_WAIT_S = 30.0  # workers started with their proxy (one Kubernetes rollout, one Slurm job) wait for it
INSTALL_HINT = "pip install 'tuner[grpc]'"


def is_proxy_url(url: str) -> bool:
    return url.startswith(SCHEME)


def proxy_address(url: str) -> tuple[str, int]:
    """The host and port of a ``grpc://host:port`` URL; anything else in it is refused.

    Example:
        >>> proxy_address("grpc://127.0.0.1:13000")
        ('127.0.0.1', 13000)
    """
    example = f"write e.g. grpc://127.0.0.1:{DEFAULT_PORT}, the host and port `tuner storage-proxy` listens on"
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise StorageError(f"storage {redact(url)!r}: a storage proxy takes no user or password (the proxy holds the "
                           f"database's); {example}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise StorageError(f"storage {url!r}: only a host and port follow grpc://; {example}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port is None or not 1 <= port <= 65535:
        raise StorageError(f"storage {url!r}: needs a host and a port from 1 to 65535; {example}")
    return parts.hostname, port


def require_grpc(what: str) -> None:
    """Import grpcio (and protobuf, which Optuna's proxy messages need), or say which extra installs them."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's C core would print its own lines on stderr
    # A worker forks (torch's DataLoader workers, subprocess with preexec_fn) and never uses gRPC in a
    # child. With fork support on, gRPC's fork handlers restart its pollers in the child, which abort
    # (SIGABRT, "epoll_wait error: Bad file descriptor") when the child closes its file descriptors.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import google.protobuf  # noqa: F401
        import grpc  # noqa: F401
    except ImportError as error:
        raise StorageError(f"{what}: needs grpcio and protobuf ({error.name} is not installed): {INSTALL_HINT}") from None


class ProxyStorage(GrpcStorageProxy):
    """Optuna's ``GrpcStorageProxy`` that knows its URL (messages and reports name the storage by it)."""

    def __init__(self, url: str) -> None:
        host, port = proxy_address(url)
        super().__init__(host=host, port=port)
        self.url = url


def open_proxy(url: str) -> BaseStorage:
    """A storage that goes through the proxy at ``url``, once the proxy answers (up to :data:`PROXY_WAIT_S`).

    Example:
        >>> storage = open_proxy("grpc://127.0.0.1:13000")  # doctest: +SKIP
    """
    proxy_address(url)  # a malformed URL is refused before grpcio is looked for
    require_grpc(f"storage {url!r}")
    with warnings.catch_warnings():  # "experimental" upstream since Optuna 4.2; we rely on it knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = ProxyStorage(url)
    try:
        storage.wait_server_ready(timeout=PROXY_WAIT_S)
    except ConnectionError:
        storage.close()
        raise StorageError(
            f"storage {url!r}: no storage proxy answered there within {PROXY_WAIT_S:.0f} s; start one with "
            f"`tuner storage-proxy --storage DATABASE-URL --port {proxy_address(url)[1]}`, or check the host and port"
        ) from None
    return storage


def proxy_failure(error: BaseException) -> str | None:
    """What went wrong, when ``error`` is a failed call to a storage proxy; else None.

    Example:
        >>> proxy_failure(ValueError("no")) is None
        True
    """
    grpc = sys.modules.get("grpc")  # an error of a proxy's call can only come once grpcio is imported
    if grpc is None:
        return None

    if not isinstance(error, grpc.RpcError):
        return None
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    reason = " ".join(str(details or error).split())
    name = getattr(code, "name", "?")
    if reason.startswith(BEHIND_PROXY):  # the proxy is there; the database behind it did not answer
        return redact(reason)
    if proxy_went_away(error):
        return f"the storage proxy went away ({name}: {redact(reason)})"
    return f"the storage proxy failed ({name}: {redact(reason)})"


def proxy_went_away(error: BaseException) -> bool:
    """Whether ``error`` is a proxy's call that found no proxy (gone, restarting, unreachable), not one it refused."""
    grpc = sys.modules.get("grpc")
    if grpc is None or not isinstance(error, grpc.RpcError) or not callable(getattr(error, "code", None)):
        return False
    return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


class ProxyServer:
    """A running proxy: where it listens, and :meth:`stop`."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let calls in flight finish (up to ``grace_s``), then close."""
        self._server.stop(grace_s).wait()


def start_proxy(storage: BaseStorage, host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int = 10,
                interceptors: Sequence[Any] = ()) -> ProxyServer:
    """Serve ``storage`` to ``GrpcStorageProxy`` clients on ``host:port`` (port 0: any free port), with gRPC's
    server ``interceptors`` (tuner's: :class:`tuner.storage.outages.DatabaseOutages`).

    ``storage`` is wrapped in Optuna's trial cache (as Optuna's own docs ask), so that the proxy
    reads from the database only what changed.

    Example:
        >>> server = start_proxy(open_storage("postgresql://tuner@db/tuner", mark_owners=False))  # doctest: +SKIP
        >>> server.stop()  # doctest: +SKIP

    Raises:
        StorageError: grpcio is missing, or the address cannot be listened on.
    """
    require_grpc("tuner storage-proxy")
    bracketed = f"[{host}]" if ":" in host else host
    try:
        server, bound = _optuna.grpc_proxy_server(optuna.storages.get_storage(storage), f"{bracketed}:{port}", threads,
                                                  interceptors)
    except RuntimeError:  # grpcio: "Failed to bind to address ...", and no reason
        raise StorageError(f"--host {host} --port {port}: cannot listen there (the port is taken, or the host is no "
                           f"address of this machine); choose another port, or 0.0.0.0 for every address") from None
    server.start()
    return ProxyServer(server, host, bound)
