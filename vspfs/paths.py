"""How vspfs compares directories: by real path, and "is this inside that".

The VSP rules (a cache file never on a snapshotted volume, a drive never
inside a served volume, excluded trees) all ask the same two questions, so
they are answered in one place, with the platform's separator.
"""

from __future__ import annotations

import os


def real_path(path: str) -> str:
    """The absolute path with every symlink resolved (what two names of one directory share)."""
    return os.path.realpath(os.path.abspath(path))


def inside(path: str, root: str) -> bool:
    """True if ``path`` is ``root`` or below it (both real paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def printable(path: str) -> str:
    """A path that JSON can carry: names that are not UTF-8 get \\xNN escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
