"""Storage URLs: the default, where a relative SQLite path points, passwords in and out of them."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import sqlalchemy

DEFAULT_STORAGE = "sqlite:///tuner.db"
PASSWORD_ENV = "TUNER_STORAGE_PASSWORD"
HIDDEN = "***"

# A query key or DSN keyword that holds a secret: password, sslpassword, passwd, pwd...
_SECRET_KEY = r"[\w.-]*(?:password|passwd|pwd)"
_SECRET_SETTING = re.compile(rf"(?i)(\b{_SECRET_KEY}\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)")
_URL = re.compile(r"[A-Za-z][\w+.-]*://\S*")

# The query keys of a SQLite URL that something reads: SQLAlchemy's pysqlite dialect hands these to
# sqlite3.connect (its create_connect_args) ...
SQLITE_DRIVER_KEYS = ("timeout", "check_same_thread", "isolation_level", "detect_types", "cached_statements", "uri")
# ... and SQLite reads these itself, from a "file:" URI opened with uri=true (sqlite.org/uri.html; modeof:
# its unix VFS). Any other key SQLAlchemy drops with a warning, or SQLite ignores.
SQLITE_URI_KEYS = ("mode", "cache", "vfs", "psow", "nolock", "immutable", "modeof")


class StorageError(ValueError):
    """A storage URL that cannot be opened; the message says why and what to do."""


def resolve_url(url: str | None, relative_to: str | Path | None = None) -> str:
    """The storage URL to open: ``None`` is :data:`DEFAULT_STORAGE`, a relative SQLite path made absolute.

    A relative path is taken from ``relative_to`` when given, else from the working directory, once:
    a later ``os.chdir`` cannot move the file a storage writes to. Other URLs are returned as given.

    Example:
        >>> resolve_url("sqlite:///runs/tuner.db", relative_to="/home/me")
        'sqlite:////home/me/runs/tuner.db'
    """
    url = url or DEFAULT_STORAGE
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path, question, query = url.removeprefix(prefix).partition("?")
    if not path or path == ":memory:" or path.startswith("file:") or Path(path).is_absolute():
        return url
    base = Path(relative_to) if relative_to is not None else Path.cwd()
    return f"{prefix}{os.path.abspath(base / path)}{question}{query}"


def redact(text: str) -> str:
    """``text`` (a URL, or a message naming URLs) with every password in it replaced by ``***``.

    Covers ``scheme://user:password@host`` (also with an unencoded ``@``, ``/`` or ``:`` in the
    password), ``?password=...`` and its kin in a query string (``sslpassword``, ``passwd``, ``pwd``),
    and ``password=...`` in a libpq connection string. Safe to print, log or store.

    Example:
        >>> redact("postgresql://tuner:s3cret@db/tuner?sslpassword=k3y")
        'postgresql://tuner:***@db/tuner?sslpassword=***'
    """
    return _SECRET_SETTING.sub(lambda m: m.group(1) + HIDDEN, _URL.sub(lambda m: _redact_url(m.group(0)), text))


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    # The user info ends at the last "@" before the query, so a password may hold "@", "/" and ":"
    # unencoded.
    query_at = rest.find("?")
    if query_at == -1:
        at = rest.rfind("@")
    else:
        at = rest.rfind("@", 0, query_at)
        if at == -1 and "/" not in rest[:query_at]:  # "user:pa?ss@host/db": a "?" in the password
            at = rest.rfind("@")
    if at == -1:
        return url
    user, colon, _ = rest[:at].partition(":")
    if not colon:
        return url  # no password: "user@host", or an "@" in a path or query
    return f"{scheme}://{user}:{HIDDEN}{rest[at:]}"


def check_user_info(url: str) -> None:
    """Refuse a database URL that its driver would read another way than a person does.

    SQLAlchemy ends the user info at the *first* ``@``: in ``postgresql://u:Pa@X/y@db/t`` the
    password is ``Pa``, the host ``X`` and the database ``y@db/t``, so a connection (and a DNS
    lookup of a fragment of the password) would go to ``X``, while :func:`redact` shows the host a
    person means. So more than one ``@`` before the query is refused before anything connects.
    SQLite paths and journal files have no user info and may hold an ``@``.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.startswith("sqlite") or scheme == "journal":
        return
    before_query, _, query = rest.partition("?")
    # A "?" in the password moves the rest of it into the query: an "@" there that is not inside a
    # key=value pair's value, or that a "/" follows (host/database), is the password's "@" too.
    query_at = any("@" in pair.partition("=")[0] or "/" in pair.partition("@")[2] for pair in query.split("&") if "@" in pair)
    if before_query.count("@") > 1 or (query_at and "@" in before_query):
        # Shown up to the last "@" hidden: every piece of the password lies before it.
        shown = f"{scheme}://{rest.partition(':')[0]}:{HIDDEN}@{rest.rpartition('@')[2]}"
        raise StorageError(f"storage {shown!r}: the password holds an '@': write it as %40, or give the password "
                           f"by --storage-password-file or ${PASSWORD_ENV}")


def check_sqlite_query(url: str, shown: str) -> None:
    """Refuse a key of the SQLite ``url``'s query that no one would read, or that would end up in the file's name.

    SQLAlchemy drops a key it does not know with a warning (and SQLite a URI parameter it does not
    know, silently); and SQLite reads ``mode=ro`` and its kin only from a ``file:`` URI with
    ``uri=true``: without ``uri=true`` they were dropped, and the study written into a file the
    user asked to open read-only; without ``file:`` they became part of the file's name.
    ``shown``: the URL as the user wrote it, for the message.
    """
    parsed = sqlalchemy.engine.make_url(url)
    for key in parsed.query:
        if key not in SQLITE_DRIVER_KEYS + SQLITE_URI_KEYS:
            raise StorageError(
                f"storage {redact(shown)!r}: unknown query key {key!r}; SQLite reads {', '.join(SQLITE_DRIVER_KEYS)}, "
                f"and from a file: URI with uri=true {', '.join(SQLITE_URI_KEYS)}: remove it or correct its spelling"
            )
    read_by_sqlite = [key for key in parsed.query if key in SQLITE_URI_KEYS]
    if not read_by_sqlite:
        return
    try:
        uri = sqlalchemy.util.asbool(parsed.query.get("uri", False))
    except ValueError:
        uri = False
    if uri and (parsed.database or "").startswith("file:"):
        return
    fate = "part of the file's name" if uri else "ignored"
    raise StorageError(
        f"storage {redact(shown)!r}: {read_by_sqlite[0]!r} is a SQLite URI parameter, read from a file: URI with "
        f"uri=true only (here it would be {fate}); write {_as_sqlite_uri(shown)}"
    )


def _as_sqlite_uri(url: str) -> str:
    """The SQLite ``url`` as a ``file:`` URI with ``uri=true``: what SQLite reads URI parameters from."""
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    pairs = [pair for pair in query.split("&") if pair and pair.partition("=")[0] != "uri"]
    return f"sqlite:///file:{path.removeprefix('file:')}?{'&'.join([*pairs, 'uri=true'])}"


def mask_user_info(text: str, url: str) -> str:
    """``text`` (a driver's message about ``url``) with passwords redacted and every piece of the URL's password hidden.

    A driver may quote what it took for a host or a database name; when that came out of the
    password, :func:`redact` alone would not see it.
    """
    text = redact(text)
    scheme, _, rest = url.partition("://")
    user_info = rest.split("?", 1)[0].rpartition("@")[0]
    password = user_info.partition(":")[2]
    pieces = {password, urllib.parse.unquote(password), *re.split(r"[@/:?]", password)}
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, HIDDEN)
    return text


def with_password(url: str, password_file: str | Path | None = None) -> str:
    """``url`` with the password from ``password_file`` (else ``$TUNER_STORAGE_PASSWORD``) put in.

    A URL that has a password keeps it. Keep the result out of logs: print ``redact(url)``.

    Example:
        >>> with_password("postgresql://tuner@db/tuner", "/run/secrets/db")  # doctest: +SKIP
    """
    if url.startswith("grpc://"):  # the proxy holds the database's password; its workers give none
        if password_file is None:
            return url
        raise StorageError(f"storage {redact(url)!r}: a password file was given, but a storage proxy takes no password; "
                           f"give it to `tuner storage-proxy`, which opens the database")
    check_user_info(url)  # before anything parses it: SQLAlchemy would read another host than a person does
    if password_file is not None:
        path = Path(password_file)
        try:
            password = path.read_text().rstrip("\r\n")  # a file usually ends with a newline; the password does not
        except OSError as error:
            raise StorageError(f"storage password file {str(path)!r}: cannot read it ({error.strerror}); give a readable file") from None
        if not password:
            raise StorageError(f"storage password file {str(path)!r}: it is empty; write the password into it")
    else:
        password = os.environ.get(PASSWORD_ENV, "")
        if not password:
            return url
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        if password_file is None:
            return url  # not a database URL (journal://...); open_storage says what is wrong, if anything
        raise StorageError(f"storage {redact(url)!r}: a password file was given, but this storage takes no password") from None
    if parsed.get_backend_name() == "sqlite":
        if password_file is None:
            return url
        raise StorageError(f"storage {redact(url)!r}: a password file was given, but SQLite takes no password")
    if parsed.password is not None:
        if password_file is None:
            return url
        raise StorageError(f"storage {redact(url)!r}: the URL has a password and a password file was given; give it once, in the file")
    return parsed.set(password=password).render_as_string(hide_password=False)


def without_password(url: str) -> tuple[str, bool]:
    """``url`` with any password (``user:pw@``, or ``?password=``) taken out, and whether it had one."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 -- not a database URL (journal:///...): nothing to take out
        return url, False
    in_query = [key for key in parsed.query if key.lower() == "password"]
    if parsed.password is None and not in_query:
        return url, False
    # URL.set() skips None, so the password goes through namedtuple's _replace.
    bare = parsed.difference_update_query(in_query)._replace(password=None)
    return bare.render_as_string(hide_password=False), True


# Said beside a command printed without its storage's password (without_password): how to give it instead.
PASSWORD_NOTE = " (with the storage's password set through TUNER_STORAGE_PASSWORD or PGPASSWORD)"
