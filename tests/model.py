"""An in-memory model of a directory tree, and the comparison of a real view with it.

The model is the oracle of the engine's model-based test
(``tests/test_engine_model.py``) and of some targeted tests: it knows what a
tree *should* contain after a sequence of operations, and a deep copy of it
is what a snapshot *should* show forever after.

- Inodes, not paths: a directory maps names to inode ids, so hard links share
  one inode (data, mode, xattrs) and a link count derives from the entries.
- Operations raise ``OSError`` with the errno Linux gives for the same call
  (ext4-like semantics, the caller being root so permissions never refuse),
  in the order the kernel checks them. The model test cross-checks these
  against a plain twin directory: a disagreement there is a bug of the
  model, and is reported as such.
- ``snapshot()`` deep-copies the model; ``ExpectedSnapshot`` pairs that copy
  with the real attributes of every path captured right before a snapshot
  was created (mtime, ctime, ino ... are then known exactly).

The comparison (``compare_view``) walks a *view* - the live volume, a
snapshot, or a plain directory - from the root and collects every
difference: set of paths, type, permission bits, size, content, symlink
targets, user.* xattrs, st_nlink, hard-link grouping (same model inode <=>
same st_ino), directory listings and, where known, exact attributes.
"""

from __future__ import annotations

import copy
import errno
import os
import stat as statmod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from vspfs.attrs import Attr

REG = statmod.S_IFREG
DIR = statmod.S_IFDIR
LNK = statmod.S_IFLNK

XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

#: the engine runs over the by-path host filesystem binding (Windows'; see
#: tests/conftest.py), which has no RENAME_EXCHANGE and no fallocate
PATHS_BINDING = os.environ.get("VSPFS_HOSTFS") == "paths"

#: the xattr namespace the tests set and compare (others, e.g. security.*,
#: may be added by the system and are not the model's business)
XATTR_PREFIX = "user."


def _err(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path)


def split(path: str) -> list[str]:
    """Components of a volume-relative path ("" and "/" are the root)."""
    return [p for p in path.strip("/").split("/") if p]


def join(parts: Iterable[str]) -> str:
    return "/".join(parts)


@dataclass
class Inode:
    kind: int  # REG, DIR or LNK
    perm: int  # S_IMODE bits
    data: bytearray = field(default_factory=bytearray)
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=dict)
    #: mtime set explicitly (utimens) and not changed since; None = not known
    mtime_ns: int | None = None


class ModelTree:
    """A directory tree of inodes. Inode ids are the model's, not the disk's."""

    ROOT = 0

    def __init__(self, root_perm: int = 0o755) -> None:
        self.inodes: dict[int, Inode] = {self.ROOT: Inode(DIR, root_perm)}
        self._next = 1
        #: inodes held open by handles: they live on with no name (nlink 0)
        self.open_refs: dict[int, int] = {}

    # -- copies ----------------------------------------------------------------

    def snapshot(self) -> ModelTree:
        """An independent deep copy (open handles do not follow: a snapshot has none)."""
        twin = copy.deepcopy(self)
        twin.open_refs = {}
        twin.gc()
        return twin

    # -- queries -------------------------------------------------------------------

    def _new(self, kind: int, perm: int) -> int:
        ino = self._next
        self._next += 1
        self.inodes[ino] = Inode(kind, perm)
        return ino

    def walk_dir(self, parts: list[str], path: str) -> int:
        """The inode of the directory named by ``parts`` (ENOENT/ENOTDIR as Linux)."""
        cur = self.ROOT
        for name in parts:
            node = self.inodes[cur]
            if node.kind != DIR:
                raise _err(errno.ENOTDIR, path)
            if name not in node.entries:
                raise _err(errno.ENOENT, path)
            cur = node.entries[name]
        if self.inodes[cur].kind != DIR:
            raise _err(errno.ENOTDIR, path)
        return cur

    def parent(self, path: str) -> tuple[int, str]:
        """(inode of the parent directory, final name); walks like the kernel."""
        parts = split(path)
        if not parts:
            raise _err(errno.EBUSY, path)
        return self.walk_dir(parts[:-1], path), parts[-1]

    def lookup(self, path: str) -> int:
        parts = split(path)
        if not parts:
            return self.ROOT
        pino, name = self.parent(path)
        try:
            return self.inodes[pino].entries[name]
        except KeyError:
            raise _err(errno.ENOENT, path) from None

    def find(self, path: str) -> int | None:
        try:
            return self.lookup(path)
        except OSError:
            return None

    def crosses_symlink(self, path: str) -> bool:
        """True if an intermediate component is a symlink. The kernel resolves
        those before a FUSE filesystem sees a path, so the live view never gets
        such paths: tests do not send them."""
        cur = self.ROOT
        for name in split(path)[:-1]:
            node = self.inodes[cur]
            if node.kind != DIR or name not in node.entries:
                return False
            cur = node.entries[name]
            if self.inodes[cur].kind == LNK:
                return True
        return False

    def kind_at(self, path: str) -> int | None:
        ino = self.find(path)
        return None if ino is None else self.inodes[ino].kind

    def nlink(self, ino: int) -> int:
        node = self.inodes[ino]
        if node.kind == DIR:
            return 2 + sum(1 for c in node.entries.values() if self.inodes[c].kind == DIR)
        return sum(1 for d in self.inodes.values() if d.kind == DIR for c in d.entries.values() if c == ino)

    def walk(self) -> Iterator[tuple[str, int]]:
        """(path, inode) of every object reachable from the root, root ("") first."""
        stack = [("", self.ROOT)]
        while stack:
            path, ino = stack.pop()
            yield path, ino
            node = self.inodes[ino]
            if node.kind == DIR:
                for name, child in sorted(node.entries.items(), reverse=True):
                    stack.append((f"{path}/{name}" if path else name, child))

    def paths(self, kind: int | None = None) -> list[str]:
        """Every path except the root (optionally of one kind), sorted."""
        return sorted(p for p, i in self.walk() if p and (kind is None or self.inodes[i].kind == kind))

    def dirs(self) -> list[str]:
        """Every directory, root ("") included, sorted."""
        return sorted(p for p, i in self.walk() if self.inodes[i].kind == DIR)

    def is_ancestor(self, anc: int, ino: int) -> bool:
        """True if directory ``anc`` is ``ino`` or contains it (at any depth)."""
        if anc == ino:
            return True
        node = self.inodes[anc]
        if node.kind != DIR:
            return False
        return any(self.is_ancestor(c, ino) for c in node.entries.values())

    def gc(self) -> None:
        """Forget inodes with no name and no open handle."""
        live = {i for _, i in self.walk()} | {i for i, n in self.open_refs.items() if n > 0}
        for ino in list(self.inodes):
            if ino not in live:
                del self.inodes[ino]

    # -- handles ---------------------------------------------------------------------

    def hold(self, ino: int) -> None:
        self.open_refs[ino] = self.open_refs.get(ino, 0) + 1

    def drop(self, ino: int) -> None:
        self.open_refs[ino] -= 1
        if not self.open_refs[ino]:
            del self.open_refs[ino]
        self.gc()

    # -- namespace operations (errors as Linux) -------------------------------------------

    def create(self, path: str, perm: int, *, exclusive: bool, trunc: bool) -> int:
        """open(O_CREAT [| O_EXCL] [| O_TRUNC]) for writing; the inode opened."""
        pino, name = self.parent(path)
        parent = self.inodes[pino]
        if name in parent.entries:
            if exclusive:
                raise _err(errno.EEXIST, path)
            ino = parent.entries[name]
            if self.inodes[ino].kind == DIR:
                raise _err(errno.EISDIR, path)
            if trunc:
                self._set_size(ino, 0)
            return ino
        ino = self._new(REG, perm)
        parent.entries[name] = ino
        parent.mtime_ns = None
        return ino

    def open_file(self, path: str, *, trunc: bool = False) -> int:
        """open(O_RDWR) of an existing object (not a symlink: callers skip those)."""
        ino = self.lookup(path)
        if self.inodes[ino].kind == DIR:
            raise _err(errno.EISDIR, path)
        if trunc:
            self._set_size(ino, 0)
        return ino

    def mkdir(self, path: str, perm: int) -> int:
        pino, name = self.parent(path)
        parent = self.inodes[pino]
        if name in parent.entries:
            raise _err(errno.EEXIST, path)
        ino = self._new(DIR, perm)
        parent.entries[name] = ino
        parent.mtime_ns = None
        return ino

    def symlink(self, target: str, path: str) -> int:
        pino, name = self.parent(path)
        parent = self.inodes[pino]
        if name in parent.entries:
            raise _err(errno.EEXIST, path)
        ino = self._new(LNK, 0o777)
        self.inodes[ino].target = target
        parent.entries[name] = ino
        parent.mtime_ns = None
        return ino

    def link(self, existing: str, new: str) -> None:
        src = self.lookup(existing)  # the kernel resolves the old name first
        pino, name = self.parent(new)
        parent = self.inodes[pino]
        if name in parent.entries:
            raise _err(errno.EEXIST, new)
        if self.inodes[src].kind == DIR:
            raise _err(errno.EPERM, existing)
        parent.entries[name] = src
        parent.mtime_ns = None

    def unlink(self, path: str) -> None:
        pino, name = self.parent(path)
        parent = self.inodes[pino]
        if name not in parent.entries:
            raise _err(errno.ENOENT, path)
        if self.inodes[parent.entries[name]].kind == DIR:
            raise _err(errno.EISDIR, path)
        del parent.entries[name]
        parent.mtime_ns = None
        self.gc()

    def rmdir(self, path: str) -> None:
        pino, name = self.parent(path)
        parent = self.inodes[pino]
        if name not in parent.entries:
            raise _err(errno.ENOENT, path)
        node = self.inodes[parent.entries[name]]
        if node.kind != DIR:
            raise _err(errno.ENOTDIR, path)
        if node.entries:
            raise _err(errno.ENOTEMPTY, path)
        del parent.entries[name]
        parent.mtime_ns = None
        self.gc()

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """renameat2 as Linux checks it (fs/namei.c do_renameat2, vfs_rename)."""
        if flags & RENAME_EXCHANGE and flags & RENAME_NOREPLACE:
            raise _err(errno.EINVAL, old)
        opino, oname = self.parent(old)
        npino, nname = self.parent(new)
        odir, ndir = self.inodes[opino], self.inodes[npino]
        if oname not in odir.entries:
            raise _err(errno.ENOENT, old)
        src = odir.entries[oname]
        dst = ndir.entries.get(nname)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise _err(errno.EEXIST, new)
        if flags & RENAME_EXCHANGE and dst is None:
            raise _err(errno.ENOENT, new)
        if opino != npino:
            # lock_rename's "trap": the source may not be an ancestor of the
            # target's directory, nor the target an ancestor of the source's
            if self.inodes[src].kind == DIR and self.is_ancestor(src, npino):
                raise _err(errno.EINVAL, old)
            if dst is not None and self.inodes[dst].kind == DIR and self.is_ancestor(dst, opino):
                raise _err(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY, new)
        if dst == src:
            return  # same inode (same name or hard links): nothing happens
        skind = self.inodes[src].kind
        if flags & RENAME_EXCHANGE:
            assert dst is not None
            odir.entries[oname], ndir.entries[nname] = dst, src
            for ino in (opino, npino, src, dst):
                self.inodes[ino].mtime_ns = None
            return
        if dst is not None:
            dkind = self.inodes[dst].kind
            if skind == DIR and dkind != DIR:
                raise _err(errno.ENOTDIR, new)
            if skind != DIR and dkind == DIR:
                raise _err(errno.EISDIR, new)
            if dkind == DIR and self.inodes[dst].entries:
                raise _err(errno.ENOTEMPTY, new)
        del odir.entries[oname]
        ndir.entries[nname] = src
        for ino in (opino, npino, src):
            self.inodes[ino].mtime_ns = None
        self.gc()

    # -- metadata ----------------------------------------------------------------------

    def chmod(self, path: str, perm: int) -> None:
        ino = self.lookup(path)
        if self.inodes[ino].kind == LNK:
            raise _err(errno.EOPNOTSUPP, path)  # fchmodat(AT_SYMLINK_NOFOLLOW) on Linux
        self.inodes[ino].perm = perm

    def utimens(self, path: str, mtime_ns: int | None) -> None:
        """Set (or, with None, set to "now": unknown to the model) the mtime."""
        self.inodes[self.lookup(path)].mtime_ns = mtime_ns

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        node = self.inodes[self.lookup(path)]
        if node.kind == LNK:
            raise _err(errno.EPERM, path)  # no user.* xattrs on symlinks
        if flags & XATTR_CREATE and name in node.xattrs:
            raise _err(errno.EEXIST, path)
        if flags & XATTR_REPLACE and name not in node.xattrs:
            raise _err(errno.ENODATA, path)
        node.xattrs[name] = bytes(value)

    def removexattr(self, path: str, name: str) -> None:
        node = self.inodes[self.lookup(path)]
        if node.kind == LNK:
            raise _err(errno.EPERM, path)
        if name not in node.xattrs:
            raise _err(errno.ENODATA, path)
        del node.xattrs[name]

    # -- data ------------------------------------------------------------------------

    def _set_size(self, ino: int, length: int) -> None:
        node = self.inodes[ino]
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(bytes(length - len(node.data)))
        node.mtime_ns = None

    def truncate(self, path: str, length: int) -> None:
        ino = self.lookup(path)
        if self.inodes[ino].kind == DIR:
            raise _err(errno.EISDIR, path)
        if length < 0:
            raise _err(errno.EINVAL, path)
        self._set_size(ino, length)

    def ftruncate(self, ino: int, length: int) -> None:
        self._set_size(ino, length)

    def write(self, ino: int, offset: int, data: bytes, *, append: bool = False) -> None:
        node = self.inodes[ino]
        if not data:
            return  # a write of nothing changes nothing (not even the size)
        if append:
            offset = len(node.data)
        end = offset + len(data)
        if end > len(node.data):
            node.data.extend(bytes(end - len(node.data)))
        node.data[offset:end] = data
        node.mtime_ns = None

    def punch_hole(self, ino: int, offset: int, length: int) -> None:
        """fallocate(PUNCH_HOLE | KEEP_SIZE): zeros inside the current size."""
        node = self.inodes[ino]
        end = min(offset + length, len(node.data))
        if offset < end:
            node.data[offset:end] = bytes(end - offset)
        node.mtime_ns = None


# -- expected snapshots --------------------------------------------------------------------


@dataclass
class ExpectedSnapshot:
    """What a snapshot must show: the model copy and the real attributes of
    every path (root "" included) captured right before its creation."""

    tree: ModelTree
    attrs: dict[str, Attr]


# -- views and the comparison ----------------------------------------------------------------


class View(Protocol):
    """What the comparison needs from a tree: the live volume, a snapshot, a directory."""

    def stat(self, path: str) -> Attr: ...
    def listdir(self, path: str) -> list[tuple[str, int | None, int | None]]: ...
    def readlink(self, path: str) -> str: ...
    def content(self, path: str, size: int) -> bytes: ...
    def xattrs(self, path: str) -> dict[str, bytes]: ...


def _user_xattrs(names: Iterable[str], get) -> dict[str, bytes]:
    return {n: get(n) for n in names if n.startswith(XATTR_PREFIX)}


def read_pieces(read, size: int, piece: int = 7) -> bytes:
    """Read [0, size + piece) in odd pieces: crosses every chunk boundary at a
    different offset, and reads past EOF once (must give nothing)."""
    out = bytearray()
    offset = 0
    while offset < size + piece:
        got = read(piece, offset)
        if offset >= size and got:
            raise AssertionError(f"read at {offset} past EOF {size} returned {got!r}")
        out += got
        offset += piece
    whole = read(size + 100, 0)
    if bytes(whole) != bytes(out):
        raise AssertionError(f"one big read {whole!r} differs from piecewise reads {bytes(out)!r}")
    return bytes(out)


class DirView:
    """A plain directory read with ordinary os calls (the twin of the model test)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def stat(self, path: str) -> Attr:
        return Attr.from_stat(os.lstat(self._p(path)))

    def listdir(self, path: str) -> list[tuple[str, int | None, int | None]]:
        return [(n, None, None) for n in os.listdir(self._p(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def content(self, path: str, size: int) -> bytes:
        fd = os.open(self._p(path), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return read_pieces(lambda n, off: os.pread(fd, n, off), size)
        finally:
            os.close(fd)

    def xattrs(self, path: str) -> dict[str, bytes]:
        p = self._p(path)
        return _user_xattrs(
            os.listxattr(p, follow_symlinks=False), lambda n: os.getxattr(p, n, follow_symlinks=False)
        )


class LiveView:
    """The live view of a ``vspfs.volume.Volume``."""

    def __init__(self, vol) -> None:
        self.vol = vol

    def stat(self, path: str) -> Attr:
        return self.vol.getattr(path)

    def listdir(self, path: str) -> list[tuple[str, int | None, int | None]]:
        return [(n, None, None) for n in self.vol.readdir(path)]

    def readlink(self, path: str) -> str:
        return self.vol.readlink(path)

    def content(self, path: str, size: int) -> bytes:
        fh = self.vol.open(path, os.O_RDONLY)
        try:
            return read_pieces(lambda n, off: self.vol.read(fh, n, off), size)
        finally:
            self.vol.release(fh)

    def xattrs(self, path: str) -> dict[str, bytes]:
        return _user_xattrs(self.vol.listxattr(path), lambda n: self.vol.getxattr(path, n))


class SnapView:
    """The read-only view of a ``vspfs.snapshot.Snapshot``."""

    def __init__(self, snap) -> None:
        self.snap = snap

    def stat(self, path: str) -> Attr:
        return self.snap.getattr(path)

    def listdir(self, path: str) -> list[tuple[str, int | None, int | None]]:
        return [(n, ino, ftype) for n, ino, ftype in self.snap.readdir(path)]

    def readlink(self, path: str) -> str:
        return self.snap.readlink(path)

    def content(self, path: str, size: int) -> bytes:
        fh = self.snap.open(path)
        try:
            return read_pieces(lambda n, off: self.snap.read(fh, n, off), size)
        finally:
            self.snap.release(fh)

    def xattrs(self, path: str) -> dict[str, bytes]:
        return _user_xattrs(self.snap.listxattr(path), lambda n: self.snap.getxattr(path, n))


#: the Attr fields a snapshot must reproduce exactly (atime excluded: reading
#: a file through any view may update it, and no backup tool relies on it)
EXACT_FIELDS = ("mode", "ino", "nlink", "uid", "gid", "size", "blocks", "mtime_ns", "ctime_ns")


def compare_view(
    view: View,
    tree: ModelTree,
    *,
    label: str,
    attrs: dict[str, Attr] | None = None,
    exact_fields: tuple[str, ...] = EXACT_FIELDS,
    root_nlink: bool = True,
    max_report: int = 12,
) -> None:
    """Assert that ``view`` shows exactly ``tree``.

    ``attrs``: exact attributes captured from the real tree (snapshots); then
    every field in ``exact_fields`` must be equal too. Collects every
    difference and raises one AssertionError listing them.
    """
    problems: list[str] = []
    ino_of: dict[int, int] = {}  # model inode -> st_ino seen
    model_of: dict[int, tuple[int, str]] = {}  # st_ino seen -> (model inode, first path)

    def bad(msg: str) -> None:
        problems.append(msg)

    for path, ino in tree.walk():
        node = tree.inodes[ino]
        shown = path or "/"
        try:
            st = view.stat(path)
        except OSError as exc:
            bad(f"{shown}: stat failed: {exc!r}")
            continue
        if statmod.S_IFMT(st.mode) != node.kind:
            bad(f"{shown}: type {statmod.S_IFMT(st.mode):o}, expected {node.kind:o}")
            continue
        if statmod.S_IMODE(st.mode) != node.perm:
            bad(f"{shown}: permissions {statmod.S_IMODE(st.mode):o}, expected {node.perm:o}")
        want_nlink = tree.nlink(ino)
        if (path or root_nlink) and st.nlink != want_nlink:
            bad(f"{shown}: st_nlink {st.nlink}, expected {want_nlink}")
        if node.mtime_ns is not None and st.mtime_ns != node.mtime_ns:
            bad(f"{shown}: mtime_ns {st.mtime_ns}, expected {node.mtime_ns} (set by utimens)")
        if attrs is not None:
            want = attrs.get(path)
            if want is None:
                bad(f"{shown}: no captured attributes (test bug)")
            else:
                for f in exact_fields:
                    if getattr(st, f) != getattr(want, f):
                        bad(f"{shown}: {f} {getattr(st, f)}, expected {getattr(want, f)} (snapshot time)")
        # hard-link grouping: one model inode <=> one st_ino
        seen = ino_of.setdefault(ino, st.ino)
        if seen != st.ino:
            bad(f"{shown}: st_ino {st.ino}, but another name of the same inode has st_ino {seen}")
        other = model_of.setdefault(st.ino, (ino, shown))
        if other[0] != ino:
            bad(f"{shown}: st_ino {st.ino} is also the st_ino of {other[1]}, a different object")
        try:
            if node.kind == REG:
                if st.size != len(node.data):
                    bad(f"{shown}: size {st.size}, expected {len(node.data)}")
                data = view.content(path, len(node.data))
                if data != bytes(node.data):
                    bad(f"{shown}: content {data!r}, expected {bytes(node.data)!r}")
            elif node.kind == LNK:
                target = view.readlink(path)
                if target != node.target:
                    bad(f"{shown}: symlink target {target!r}, expected {node.target!r}")
                if st.size != len(os.fsencode(node.target)):
                    bad(f"{shown}: symlink size {st.size}, expected {len(os.fsencode(node.target))}")
            else:
                listing = view.listdir(path)
                names = sorted(n for n, _, _ in listing)
                if len(names) != len(set(names)):
                    bad(f"{shown}: duplicate names in listing {names!r}")
                want_names = sorted(node.entries)
                if names != want_names:
                    bad(f"{shown}: listing {names!r}, expected {want_names!r}")
                for name, eino, etype in listing:
                    child = node.entries.get(name)
                    if child is None:
                        continue
                    ckind = tree.inodes[child].kind
                    if etype is not None and etype != ckind:
                        bad(f"{shown}: entry {name!r} has type {etype:o}, expected {ckind:o}")
                    if eino is not None and attrs is not None:
                        cpath = f"{path}/{name}" if path else name
                        want = attrs.get(cpath)
                        if want is not None and eino != want.ino:
                            bad(f"{shown}: entry {name!r} has ino {eino}, expected {want.ino}")
            xattrs = view.xattrs(path)
            if xattrs != node.xattrs:
                bad(f"{shown}: xattrs {xattrs!r}, expected {node.xattrs!r}")
        except OSError as exc:
            bad(f"{shown}: reading failed: {exc!r}")
        if len(problems) > max_report:
            break
    if problems:
        raise AssertionError(f"{label} differs from the model:\n  " + "\n  ".join(problems[:max_report]))


def capture_attrs(view: View, tree: ModelTree) -> dict[str, Attr]:
    """The real attributes of every path of ``tree`` as ``view`` shows them now."""
    return {path: view.stat(path) for path, _ in tree.walk()}


# -- a system call the os module lacks (for twin directories) -------------------------------

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode, for the plain twin directory."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    ret = libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_int64(offset), ctypes.c_int64(length))
    if ret != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
