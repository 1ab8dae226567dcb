"""A pass-through FUSE file system that fails chosen operations with EIO.

Used as the *backing* filesystem of a served volume, to see what vspfs does
when the disk under a volume returns I/O errors (tests/test_io_errors.py).
Run as a process of its own (never in the process that serves vspfs)::

    python3 tests/faultyfs.py UNDERLYING MOUNTPOINT

Every operation goes to the same path under UNDERLYING. Faults are chosen at
run time by the file ``UNDERLYING/.faults`` (hidden from listings and
lookups), read again whenever it changes: one rule per line, ``OP TEXT``,
which makes OP fail with EIO for every path containing TEXT. OP is one of
read, write, open, getattr, readdir, truncate, fsync, fsyncdir. An empty or missing
file means no faults, so a test can inject and clear faults by writing that
file directly in UNDERLYING, never through the mount.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mount.fuse import load_mfusepy

RULES = ".faults"


class FaultyFS:
    """The operations; built on mfusepy.Operations at run time (see main)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self._rules: list[tuple[str, str]] = []
        self._rules_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    # -- faults

    def _faults(self) -> list[tuple[str, str]]:
        try:
            st = os.stat(os.path.join(self.root, RULES))
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._rules_stamp:
                with open(os.path.join(self.root, RULES), encoding="utf-8") as f:
                    lines = [line.split(None, 1) for line in f.read().splitlines()]
                self._rules = [(a, b.strip()) for a, b in (x for x in lines if len(x) == 2)]
                self._rules_stamp = stamp
            return list(self._rules)

    def _check(self, op: str, path: str) -> None:
        if path.lstrip("/") == RULES:
            raise OSError(errno.ENOENT, "hidden")
        for rule_op, text in self._faults():
            if rule_op == op and text in path:
                raise OSError(errno.EIO, f"injected {op} fault")

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # -- metadata

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        self._check("getattr", path)
        st = os.lstat(self._p(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks")
        out: dict[str, Any] = {k: getattr(st, k) for k in keys}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            out[k] = getattr(st, k + "_ns") / 1e9
        return out

    def readdir(self, path: str, fh: Any) -> list[Any]:
        self._check("readdir", path)
        out: list[Any] = [".", ".."]
        with os.scandir(self._p(path)) as it:
            for e in it:
                if not (path == "/" and e.name == RULES):
                    # with use_ino an entry needs its number (0 hides it)
                    st = e.stat(follow_symlinks=False)
                    out.append((e.name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
        return out

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_frsize")
        return {k: getattr(st, k) for k in keys} | {"f_namemax": st.f_namemax}

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._p(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> int:
        os.utime(self._p(path), times, follow_symlinks=False)
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._check("truncate", path)
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)
        return 0

    # -- names

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._p(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._p(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._p(target))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._p(source), self._p(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._p(old), self._p(new))
        return 0

    # -- data

    def open(self, path: str, flags: int) -> int:
        self._check("open", path)
        return os.open(self._p(path), flags & ~os.O_CREAT)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._check("open", path)
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._check("read", path)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._check("write", path)
        return os.pwrite(fh, data, offset)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._check("fsync", path)
        os.fsync(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._check("fsyncdir", path)
        fd = os.open(self._p(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: faultyfs.py UNDERLYING MOUNTPOINT", file=sys.stderr)
        return 2
    mfusepy = load_mfusepy()
    ops = type("FaultyOps", (FaultyFS, mfusepy.Operations), {})(argv[0])
    # direct_io: every read and write reaches us (no page cache hides a fault);
    # use_ino: the underlying inode numbers, stable like a disk's (without it
    # libfuse numbers nodes itself and renumbers them once the kernel forgets
    # them, and vspfs finds snapshot objects by inode number).
    mfusepy.FUSE(
        ops,
        argv[1],
        foreground=True,
        fsname="faultyfs",
        direct_io=True,
        use_ino=True,
        attr_timeout=0,
        entry_timeout=0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
