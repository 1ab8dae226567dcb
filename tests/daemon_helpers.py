"""Helpers shared by the tests that drive a real `vspfs serve` subprocess.

The daemon world itself (directories, environment, CLI calls, start/stop,
teardown that never leaves a mount behind) is ``Env`` from
``tests/test_daemon_e2e.py``, re-exported here. What this module adds:

* :func:`served` -- a context manager around ``Env`` usable at any fixture
  scope (the ``env`` fixture of test_daemon_e2e is per test), with
  ``--allow-other`` when the tests need another user to reach the mounts;
* :func:`manifest` / :func:`compare` -- what a tree holds (type, mode,
  owner, size, sha256, symlink target, device numbers, xattrs, times, link
  counts and hard-link groups), read without changing access times, and a
  comparison with per-field choices (each backup tool preserves a different
  subset);
* :func:`leftovers` -- mounts, cache files and retained areas still there.

No helper here ever goes through a mount from the daemon's process: the
daemon is a separate subprocess in every test that uses them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from test_daemon_e2e import Env, mounts_under, open_errno, wait_until

__all__ = [
    "EXACT_FIELDS",
    "Env",
    "compare",
    "leftovers",
    "manifest",
    "mounts_under",
    "open_errno",
    "served",
    "wait_until",
]

_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def served(prefix: str = "vsph", *, allow_other: bool = False, extra: tuple[str, ...] = ()) -> Iterator[Env]:
    """A running daemon serving ``backing=live`` with a cache volume, torn down whatever happens.

    With ``allow_other`` every directory on the way is searchable by others
    (``mkdtemp`` makes 0700 directories) and the mounts admit other users.
    """
    base = tempfile.mkdtemp(prefix=prefix)  # short: Unix socket paths are limited to 107 bytes
    env = Env(base)
    try:
        if allow_other:
            for d in (base, env.backing, env.live, env.cache):
                os.chmod(d, 0o755)
        env.start(extra=(("--allow-other",) if allow_other else ()) + extra)
        yield env
    finally:
        env.teardown()
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------- manifest

_TYPES = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _NOATIME)
    except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: str, namespaces: tuple[str, ...]) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in names:
        if name.startswith(namespaces):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def _listdir(path: str) -> list[str]:
    try:
        fd = os.open(path, _DIR_FLAGS | _NOATIME)
    except PermissionError:
        fd = os.open(path, _DIR_FLAGS)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def manifest(
    root: str, *, contents: bool = True, namespaces: tuple[str, ...] = ("user.",)
) -> dict[str, dict[str, Any]]:
    """{relative path: record} of everything under ``root`` (not ``root`` itself).

    Names are ``str`` with surrogate escapes (non-UTF-8 names survive).
    Nothing is read in a way that changes an access time (O_NOATIME where
    allowed), so taking a manifest does not disturb what is measured next.
    Each record has ``type mode uid gid nlink mtime_ns ctime_ns ino`` and,
    by type, ``size sha256 blocks`` (regular files), ``target`` (symlinks),
    ``rdev`` (devices), plus ``xattrs`` in ``namespaces``. The special key
    ``"//groups"`` holds the hard-link groups: sorted tuples of the paths
    that share an inode, for every inode with more than one path.
    """
    out: dict[str, dict[str, Any]] = {}
    by_ino: dict[int, list[str]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        here = os.path.join(root, rel) if rel else root
        for name in _listdir(here):
            rpath = f"{rel}/{name}" if rel else name
            path = os.path.join(root, rpath)
            st = os.lstat(path)
            kind = _TYPES.get(stat.S_IFMT(st.st_mode), "?")
            rec: dict[str, Any] = {
                "type": kind,
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "nlink": st.st_nlink,
                "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns,
                "ino": st.st_ino,
                "xattrs": _xattrs(path, namespaces) if kind != "lnk" else {},
            }
            if kind == "reg":
                rec["size"] = st.st_size
                rec["blocks"] = st.st_blocks
                if contents:
                    rec["sha256"] = _sha256(path)
            elif kind == "lnk":
                rec["target"] = os.readlink(path)
                rec["size"] = st.st_size
            elif kind in ("chr", "blk"):
                rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            elif kind == "dir":
                stack.append(rpath)
            out[rpath] = rec
            if kind != "dir":
                by_ino.setdefault(st.st_ino, []).append(rpath)
    out["//groups"] = {"groups": sorted(tuple(sorted(p)) for p in by_ino.values() if len(p) > 1)}
    return out


#: fields compared unless told otherwise (no inode numbers, no ctime: a
#: restored copy cannot have them; snapshots can, and ask for them)
DEFAULT_FIELDS = ("type", "mode", "uid", "gid", "size", "sha256", "target", "rdev", "xattrs", "mtime_s")
#: every field a snapshot (or the live view, against its backing) must
#: reproduce exactly: nanosecond times and inode numbers too; not st_blocks,
#: which ext4 may change at writeback without a write (docs/design.md)
EXACT_FIELDS = (*DEFAULT_FIELDS[:-1], "mtime_ns", "ctime_ns", "ino")


def compare(
    expected: dict[str, dict[str, Any]],
    got: dict[str, dict[str, Any]],
    *,
    fields: Iterable[str] = DEFAULT_FIELDS,
    nlink: bool = True,
    groups: bool = True,
    dir_times: bool = True,
    ignore: Iterable[str] = (),
) -> list[str]:
    """Human-readable differences between two manifests; empty when they agree.

    ``mtime_s`` compares whole seconds (tar's default format keeps no more),
    ``mtime_ns``/``ctime_ns`` exact values. ``dir_times=False`` skips the
    times of directories. ``ignore`` names paths (and everything below them)
    to leave out on both sides.
    """
    fields = tuple(fields)
    skip = tuple(ignore)

    def wanted(path: str) -> bool:
        return not any(path == s or path.startswith(s + "/") for s in skip)

    problems = []
    exp_paths = {p for p in expected if p != "//groups" and wanted(p)}
    got_paths = {p for p in got if p != "//groups" and wanted(p)}
    for p in sorted(exp_paths - got_paths):
        problems.append(f"missing: {p!r}")
    for p in sorted(got_paths - exp_paths):
        problems.append(f"unexpected: {p!r}")
    for p in sorted(exp_paths & got_paths):
        e, g = expected[p], got[p]
        for f in fields:
            if f in ("mtime_s", "mtime_ns", "ctime_ns") and e["type"] == "dir" and not dir_times:
                continue
            if f == "mtime_s":
                if e["type"] != "lnk" and e["mtime_ns"] // 10**9 != g["mtime_ns"] // 10**9:
                    problems.append(f"{p!r}: mtime {e['mtime_ns']} != {g['mtime_ns']}")
                continue
            if e.get(f) != g.get(f):
                problems.append(f"{p!r}: {f} {e.get(f)!r} != {g.get(f)!r}")
        if nlink and e["type"] != "dir" and e["nlink"] != g["nlink"]:
            problems.append(f"{p!r}: nlink {e['nlink']} != {g['nlink']}")
    if groups:
        eg = [g for g in expected["//groups"]["groups"] if all(wanted(p) for p in g)]
        gg = [g for g in got["//groups"]["groups"] if all(wanted(p) for p in g)]
        if eg != gg:
            problems.append(f"hard-link groups differ: {eg} != {gg}")
    return problems


def sparse(rec: dict[str, Any]) -> bool:
    """True when a regular file's allocated blocks are well below its size."""
    return rec["blocks"] * 512 < rec["size"] // 2


# ---------------------------------------------------------------- leftovers


def retained_entries(env: Env) -> list[str] | None:
    """What the volume's retained area holds; None when there is no area.

    A running daemon keeps the (empty, locked) area for as long as it serves
    the volume; destroying the last snapshot must empty it, stopping the
    daemon must remove it.
    """
    try:
        return sorted(os.listdir(os.path.join(env.backing, ".vsp-retained")))
    except FileNotFoundError:
        return None


def leftovers(env: Env) -> dict[str, Any]:
    """Mounts under the test's directory, cache files and retained objects that remain."""
    return {
        "mounts": mounts_under(env.base),
        "cache_files": env.cache_files(),
        "retained": retained_entries(env),
    }


def mounted_here(env: Env) -> list[str]:
    """Mounts under the test's directory other than the live view."""
    return [m for m in mounts_under(env.base) if m != env.live]


def run_tool(args: list[str], *, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a backup tool with a timeout; the completed process (never raises on exit status)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
