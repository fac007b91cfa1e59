"""The default output folder of a study: ``<name>-report``, ``<name>-best``, whatever the name holds.

A study's name comes from a spec, the command line or a storage that another tool filled: it may
hold a ``/`` (``../../esc`` would put a report outside the working folder), a control character,
or be longer than a file name may be (``tuner study`` takes 300 characters; the file system takes
255 bytes). :func:`default_folder` is the one place that turns a name into a folder name.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["MAX_FOLDER_BYTES", "default_folder"]

MAX_FOLDER_BYTES = 255  # a file name's limit on Linux (ext4, xfs, btrfs, tmpfs) and macOS
HASH_CHARS = 8  # of the name's sha256: tells apart names that differ only where they were cut or replaced
_SEPARATORS = frozenset({"/", "\\", os.sep, os.altsep or "/"})


def default_folder(name: str, suffix: str) -> str:
    """A folder name for study ``name`` in the working folder: ``name + suffix`` when that is safe.

    Safe: one path component (no separator; with a suffix it cannot be ``.`` or ``..``), no control
    or other unprintable character, at most ``MAX_FOLDER_BYTES`` bytes of UTF-8. Any other name has
    those characters replaced by ``_``, is cut to fit, and gets a short hash of the whole name
    before the suffix, so that two names never share a folder because of what was cut or replaced.

    Example:
        >>> default_folder("quickstart", "-best")
        'quickstart-best'
        >>> default_folder("../../esc", "-report")
        '.._.._esc-9fddcecd-report'

    Args:
        name: the study's name, as the user gave it.
        suffix: what names the output, e.g. ``-report``.
    """
    cleaned = "".join("_" if char in _SEPARATORS or not char.isprintable() else char for char in name)
    whole = cleaned + suffix
    if cleaned == name and whole not in ("", ".", "..") and len(whole.encode("utf-8")) <= MAX_FOLDER_BYTES:
        return whole
    # surrogatepass: a name read from undecodable command-line bytes still has a hash.
    tag = "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    room = MAX_FOLDER_BYTES - len((tag + suffix).encode("utf-8"))
    kept = cleaned.encode("utf-8")[:max(room, 0)].decode("utf-8", "ignore")  # never half a character
    return kept + tag + suffix
