"""Model-based test of the engine: random operation sequences, every snapshot
checked against a model after every step.

Three trees receive the same operations:

- the **live view** (``vspfs.volume.Volume``) of a served backing directory;
- a **twin**: a plain directory operated with ordinary os calls;
- the **model** (``tests/model.py``).

After each operation the live view must report the same errno as the twin
(the live view must behave exactly like the filesystem under it), the model
must agree with the twin (otherwise the *model* is wrong, and the message
says so), and the live view, the twin and every alive snapshot must equal
their model: a snapshot equals the copy of the model taken when it was
created, with the real attributes captured at that moment (mtime, ctime,
st_ino ...), whatever live operations followed.

Paths the kernel would never hand to a FUSE filesystem (an intermediate
component that is a symlink, open/truncate of a symlink) are not sent.

Depth: ``VSPFS_MODEL_EXAMPLES`` if set; else 1000 examples under the "ci"
Hypothesis profile (tools/run-tests); else the profile's max_examples.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as statmod
import tempfile
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.model import (
    DIR,
    LNK,
    PATHS_BINDING,
    PUNCH_HOLE,
    REG,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    XATTR_CREATE,
    XATTR_REPLACE,
    DirView,
    ExpectedSnapshot,
    LiveView,
    ModelTree,
    SnapView,
    capture_attrs,
    compare_view,
    fallocate,
)
from vspfs.retained import LOCK_NAME

CHUNK = 16
#: what a failed operation must leave alone (atime excluded: the engine may read)
LIVE_FIELDS = ("mode", "ino", "nlink", "uid", "gid", "size", "blocks", "mtime_ns", "ctime_ns")
MAX_SNAPSHOTS = 3
MAX_HANDLES = 3
RETAINED = ".vsp-retained"


def _examples() -> int:
    env = os.environ.get("VSPFS_MODEL_EXAMPLES")
    if env:
        return int(env)
    if settings.get_current_profile_name() == "ci":
        return 1000
    return settings.default.max_examples


NAMES = ("a", "b", "c", "\udcff")  # the last one is the byte 0xff (not UTF-8), surrogate-escaped
fresh_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
#: a path: an existing one (by index, which shrinks well), a name in an
#: existing directory (which may or may not exist), or any path at all
path_refs = st.tuples(
    st.sampled_from(["old", "old", "child", "new"]), st.integers(0, 40), st.sampled_from(NAMES), fresh_paths
)
#: a destination for link/rename: usually a name in an existing directory
dest_refs = st.tuples(
    st.sampled_from(["child", "child", "old", "new"]), st.integers(0, 40), st.sampled_from(NAMES), fresh_paths
)
#: the same, or (rarely) the root of the volume
target_refs = st.one_of(path_refs, st.just(("root", 0, "", "")))
payloads = st.binary(min_size=0, max_size=40)
offsets = st.integers(0, 80)
perms = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o777, 0o000, 0o4755, 0o1777])
xattr_names = st.sampled_from(["user.a", "user.b", "user.\udcff"])
link_targets = st.sampled_from(["zz", "a", "../b/c", "x" * 40, "/abs/path"])


@dataclass
class Handle:
    ino: int  # the model's inode
    path: str
    live: int
    twin: int
    append: bool


@dataclass
class Alive:
    snap: object
    expected: ExpectedSnapshot
    step: int
    #: checked after every step; an unwatched snapshot is first read only
    #: much later, so its lookups start cold (no cached node or fd from
    #: before the changes)
    watched: bool
    #: snapshot handles opened at some step and read at later ones: (path, fh)
    handles: list[tuple[str, int]] = field(default_factory=list)


def _errno(exc: BaseException | None) -> int | None:
    return None if exc is None else exc.errno  # type: ignore[attr-defined]


def _name(code: int | None) -> str:
    return "success" if code is None else errno.errorcode.get(code, str(code))


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="vspfs-model-")
        self.backing = os.path.join(self.tmp, "volume")
        self.twin_root = os.path.join(self.tmp, "twin")
        self.state_dir = os.path.join(self.tmp, "state")
        for d in (self.backing, self.twin_root):
            os.mkdir(d)
            os.chmod(d, 0o755)
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.model = ModelTree(0o755)
        self.twin = DirView(self.twin_root)
        self.handles: list[Handle] = []
        self.alive: list[Alive] = []
        self.destroyed: list[object] = []
        self.steps = 0
        self.provider = None
        self.vol = None
        self._start_live()
        self.live = LiveView(self.vol)

    # -- the engine under test (a scratch subclass may replace it) ---------------------------

    def _start_live(self) -> None:
        from vspfs.provider import Provider

        self.provider = Provider(self.state_dir)
        self.vol = self.provider.add_volume(self.backing, chunk_size=CHUNK)

    def _create_snapshot(self):
        [snap] = self.provider.create_snapshot_set([self.vol])
        return snap

    def _destroy(self, snap) -> None:
        self.provider.destroy(snap)

    def _close(self) -> None:
        self.provider.close()

    # -- helpers ----------------------------------------------------------------------

    def tp(self, path: str) -> str:
        """The twin's real path for a volume path."""
        return os.path.join(self.twin_root, path) if path else self.twin_root

    def resolve(self, ref: tuple[str, int, str, str], kind: int | None = None) -> str:
        tag, idx, name, fresh = ref
        if tag == "root":
            return ""
        if tag == "old":
            pool = self.model.paths(kind) or self.model.paths()
            if pool:
                return pool[idx % len(pool)]
            return name
        if tag == "child":
            return self._child(idx, name)
        return fresh

    def _child(self, idx: int, name: str) -> str:
        dirs = self.model.dirs()
        parent = dirs[idx % len(dirs)]
        return f"{parent}/{name}" if parent else name

    def resolve_dir(self, ref: tuple[str, int, str, str]) -> str:
        """A parent directory for a new name: usually an existing directory."""
        tag, idx, _name, fresh = ref
        if tag == "new":
            return fresh
        dirs = self.model.dirs()
        return dirs[idx % len(dirs)]

    def in_contract(self, *paths: str) -> bool:
        return not any(self.model.crosses_symlink(p) for p in paths)

    def apply(self, what: str, model, twin, live):
        """Run one operation on the model, the twin and the live view; their
        outcomes must agree. Returns the three results (or None each on error)."""
        self.steps += 1
        m_exc = t_exc = l_exc = None
        m_res = t_res = l_res = None
        before = capture_attrs(self.live, self.model)
        try:
            m_res = model()
        except OSError as exc:
            m_exc = exc
        try:
            t_res = twin()
        except OSError as exc:
            t_exc = exc
        try:
            l_res = live()
        except OSError as exc:
            l_exc = exc
        if _errno(l_exc) != _errno(t_exc):
            raise AssertionError(
                f"{what}: live view gave {_name(_errno(l_exc))} ({l_exc!r}), "
                f"the filesystem underneath gives {_name(_errno(t_exc))} ({t_exc!r})"
            )
        if _errno(m_exc) != _errno(t_exc):
            raise AssertionError(
                f"MODEL BUG (not an engine bug): {what}: model expects {_name(_errno(m_exc))}, "
                f"the real filesystem gives {_name(_errno(t_exc))} ({t_exc!r})"
            )
        if t_exc is not None:
            # a refused operation changes nothing, not even a ctime or a link count
            after = capture_attrs(self.live, self.model)
            changed = [
                f"{p or '/'}: {f} {getattr(before[p], f)} -> {getattr(after[p], f)}"
                for p in before
                for f in LIVE_FIELDS
                if getattr(before[p], f) != getattr(after[p], f)
            ]
            if changed:
                raise AssertionError(
                    f"{what} failed with {_name(t_exc.errno)} as it should, but the live view "
                    "changed: " + "; ".join(changed)
                )
        return (m_res, t_res, l_res) if t_exc is None else (None, None, None)

    # -- a starting tree --------------------------------------------------------------------

    @initialize(
        spec=st.lists(
            st.tuples(fresh_paths, st.sampled_from([REG, REG, DIR]), payloads), min_size=2, max_size=8
        )
    )
    def populate(self, spec):
        """Start from a small tree (made through the live view), not from nothing."""
        for path, kind, data in spec:
            if self.model.find(path) is not None or not self.in_contract(path):
                continue
            try:
                self.model.parent(path)
            except OSError:
                continue
            if kind == DIR:
                self.model.mkdir(path, 0o755 & ~self.umask)
                os.mkdir(self.tp(path), 0o755)
                self.vol.mkdir("/" + path, 0o755)
                continue
            ino = self.model.create(path, 0o644 & ~self.umask, exclusive=True, trunc=False)
            self.model.write(ino, 0, data)
            with open(self.tp(path), "xb") as f:
                f.write(data)
            fh = self.vol.create("/" + path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                self.vol.write(fh, data, 0)
            finally:
                self.vol.release(fh)

    # -- namespace rules ------------------------------------------------------------------

    @rule(parent=path_refs, name=st.sampled_from(NAMES), data=payloads, perm=perms, excl=st.booleans())
    def create_file(self, parent, name, data, perm, excl):
        dpath = self.resolve_dir(parent)
        path = f"{dpath}/{name}" if dpath else name
        if not self.in_contract(path) or (not excl and self.model.kind_at(path) == LNK):
            return
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if excl else os.O_TRUNC)
        mperm = perm & 0o7777 & ~self.umask

        def model():
            ino = self.model.create(path, mperm, exclusive=excl, trunc=not excl)
            self.model.write(ino, 0, data)

        def twin():
            fd = os.open(self.tp(path), flags | os.O_NOFOLLOW, perm)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)

        def live():
            fh = self.vol.create("/" + path, flags, perm)
            try:
                self.vol.write(fh, data, 0)
            finally:
                self.vol.release(fh)

        self.apply(
            f"create({path!r}, {'O_EXCL' if excl else 'O_TRUNC'}) + write({data!r})", model, twin, live
        )

    @rule(parent=path_refs, name=st.sampled_from(NAMES), perm=perms)
    def mkdir(self, parent, name, perm):
        dpath = self.resolve_dir(parent)
        path = f"{dpath}/{name}" if dpath else name
        if not self.in_contract(path):
            return
        mperm = perm & 0o1777 & ~self.umask  # mkdir keeps only the permission and sticky bits
        self.apply(
            f"mkdir({path!r}, {perm:o})",
            lambda: self.model.mkdir(path, mperm),
            lambda: os.mkdir(self.tp(path), perm),
            lambda: self.vol.mkdir("/" + path, perm),
        )

    @rule(parent=path_refs, name=st.sampled_from(NAMES), dest=link_targets)
    def symlink(self, parent, name, dest):
        dpath = self.resolve_dir(parent)
        path = f"{dpath}/{name}" if dpath else name
        if not self.in_contract(path):
            return
        self.apply(
            f"symlink({dest!r}, {path!r})",
            lambda: self.model.symlink(dest, path),
            lambda: os.symlink(dest, self.tp(path)),
            lambda: self.vol.symlink(dest, "/" + path),
        )

    @rule(ref=path_refs)
    def unlink(self, ref):
        path = self.resolve(ref, REG)
        if not self.in_contract(path):
            return
        self.apply(
            f"unlink({path!r})",
            lambda: self.model.unlink(path),
            lambda: os.unlink(self.tp(path)),
            lambda: self.vol.unlink("/" + path),
        )

    @rule(ref=path_refs, empty=st.booleans())
    def rmdir(self, ref, empty):
        empties = [p for p in self.model.paths(DIR) if not self.model.inodes[self.model.lookup(p)].entries]
        if empty and empties and ref[0] == "old":
            path = empties[ref[1] % len(empties)]
        else:
            path = self.resolve(ref, DIR)
        if not self.in_contract(path):
            return
        self.apply(
            f"rmdir({path!r})",
            lambda: self.model.rmdir(path),
            lambda: os.rmdir(self.tp(path)),
            lambda: self.vol.rmdir("/" + path),
        )

    @rule(
        old=path_refs,
        new=dest_refs,
        flags=st.sampled_from([0, 0, RENAME_NOREPLACE] + ([] if PATHS_BINDING else [RENAME_EXCHANGE])),
        old_dir=st.booleans(),
    )
    def rename(self, old, new, flags, old_dir):
        src = self.resolve(old, DIR if old_dir else None)
        dst = self.resolve(new)
        if not self.in_contract(src, dst):
            return

        def twin():
            if flags:
                _renameat2(self.tp(src), self.tp(dst), flags)
            else:
                os.rename(self.tp(src), self.tp(dst))

        self.apply(
            f"rename({src!r}, {dst!r}, flags={flags})",
            lambda: self.model.rename(src, dst, flags),
            twin,
            lambda: self.vol.rename("/" + src, "/" + dst, flags),
        )

    @rule(old=path_refs, new=dest_refs)
    def link(self, old, new):
        src = self.resolve(old, REG)
        dst = self.resolve(new)
        if not self.in_contract(src, dst):
            return
        self.apply(
            f"link({src!r}, {dst!r})",
            lambda: self.model.link(src, dst),
            lambda: os.link(self.tp(src), self.tp(dst), follow_symlinks=False),
            lambda: self.vol.link("/" + src, "/" + dst),
        )

    # -- metadata rules ---------------------------------------------------------------------

    @rule(ref=target_refs, perm=perms)
    def chmod(self, ref, perm):
        path = self.resolve(ref)
        if not self.in_contract(path):
            return

        def twin():
            if statmod.S_ISLNK(os.lstat(self.tp(path)).st_mode):
                raise OSError(errno.EOPNOTSUPP, "chmod of a symlink", path)
            os.chmod(self.tp(path), perm)

        self.apply(
            f"chmod({path!r}, {perm:o})",
            lambda: self.model.chmod(path, perm),
            twin,
            lambda: self.vol.chmod("/" + path, perm),
        )

    @rule(
        ref=target_refs, mtime=st.one_of(st.none(), st.integers(0, 4 * 10**18)), atime=st.integers(0, 10**18)
    )
    def utimens(self, ref, mtime, atime):
        from vspfs.volume import UTIME_NOW

        path = self.resolve(ref)
        if not self.in_contract(path):
            return

        def twin():
            if mtime is None:
                os.utime(self.tp(path), follow_symlinks=False)
            else:
                os.utime(self.tp(path), ns=(atime, mtime), follow_symlinks=False)

        def live():
            if mtime is None:
                self.vol.utimens("/" + path, UTIME_NOW, UTIME_NOW)
            else:
                self.vol.utimens("/" + path, atime, mtime)

        self.apply(f"utimens({path!r}, mtime={mtime})", lambda: self.model.utimens(path, mtime), twin, live)

    @rule(
        ref=target_refs,
        name=xattr_names,
        value=st.binary(max_size=8),
        flags=st.sampled_from([0, 0, XATTR_CREATE, XATTR_REPLACE]),
    )
    def setxattr(self, ref, name, value, flags):
        path = self.resolve(ref)
        if not self.in_contract(path):
            return
        self.apply(
            f"setxattr({path!r}, {name!r}, {value!r}, flags={flags})",
            lambda: self.model.setxattr(path, name, value, flags),
            lambda: os.setxattr(self.tp(path), name, value, flags, follow_symlinks=False),
            lambda: self.vol.setxattr("/" + path, name, value, flags),
        )

    @rule(ref=target_refs, name=xattr_names)
    def removexattr(self, ref, name):
        path = self.resolve(ref)
        if not self.in_contract(path):
            return
        self.apply(
            f"removexattr({path!r}, {name!r})",
            lambda: self.model.removexattr(path, name),
            lambda: os.removexattr(self.tp(path), name, follow_symlinks=False),
            lambda: self.vol.removexattr("/" + path, name),
        )

    # -- data rules -----------------------------------------------------------------------------

    def _data_path(self, ref) -> str | None:
        path = self.resolve(ref, REG)
        if not self.in_contract(path) or self.model.kind_at(path) == LNK:
            return None
        return path

    @rule(ref=path_refs, offset=offsets, data=payloads, wronly=st.booleans())
    def write(self, ref, offset, data, wronly):
        path = self._data_path(ref)
        if path is None:
            return
        flags = os.O_WRONLY if wronly else os.O_RDWR

        def model():
            self.model.write(self.model.open_file(path), offset, data)

        def twin():
            fd = os.open(self.tp(path), flags | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        def live():
            fh = self.vol.open("/" + path, flags)
            try:
                self.vol.write(fh, data, offset)
            finally:
                self.vol.release(fh)

        self.apply(f"write({path!r}, offset={offset}, {data!r})", model, twin, live)

    @rule(ref=path_refs, length=st.integers(0, 100))
    def truncate(self, ref, length):
        path = self._data_path(ref)
        if path is None:
            return
        self.apply(
            f"truncate({path!r}, {length})",
            lambda: self.model.truncate(path, length),
            lambda: os.truncate(self.tp(path), length),
            lambda: self.vol.truncate("/" + path, length),
        )

    @rule(ref=path_refs, append=st.booleans(), trunc=st.booleans())
    def open_handle(self, ref, append, trunc):
        if len(self.handles) >= MAX_HANDLES:
            return
        path = self._data_path(ref)
        if path is None:
            return
        flags = os.O_RDWR | (os.O_APPEND if append else 0) | (os.O_TRUNC if trunc else 0)
        m, t, lv = self.apply(
            f"open({path!r}, append={append}, trunc={trunc})",
            lambda: self.model.open_file(path, trunc=trunc),
            lambda: os.open(self.tp(path), flags | os.O_NOFOLLOW),
            lambda: self.vol.open("/" + path, flags),
        )
        if t is None:
            return
        self.model.hold(m)
        self.handles.append(Handle(m, path, lv, t, append))

    @precondition(lambda self: self.handles)
    @rule(idx=st.integers(0, MAX_HANDLES - 1), offset=offsets, data=payloads)
    def write_handle(self, idx, offset, data):
        h = self.handles[idx % len(self.handles)]
        self.apply(
            f"write(handle of {h.path!r}, offset={offset}, {data!r}, append={h.append})",
            lambda: self.model.write(h.ino, offset, data, append=h.append),
            lambda: os.pwrite(h.twin, data, offset),
            lambda: self.vol.write(h.live, data, offset),
        )

    @precondition(lambda self: self.handles)
    @rule(idx=st.integers(0, MAX_HANDLES - 1), length=st.integers(0, 100))
    def truncate_handle(self, idx, length):
        h = self.handles[idx % len(self.handles)]
        self.apply(
            f"ftruncate(handle of {h.path!r}, {length})",
            lambda: self.model.ftruncate(h.ino, length),
            lambda: os.ftruncate(h.twin, length),
            lambda: self.vol.truncate("/" + h.path, length, fh=h.live),
        )

    @precondition(lambda self: self.handles and not PATHS_BINDING)
    @rule(idx=st.integers(0, MAX_HANDLES - 1), offset=offsets, length=st.integers(1, 60))
    def punch_hole(self, idx, offset, length):
        h = self.handles[idx % len(self.handles)]
        self.apply(
            f"fallocate(handle of {h.path!r}, PUNCH_HOLE|KEEP_SIZE, {offset}, {length})",
            lambda: self.model.punch_hole(h.ino, offset, length),
            lambda: fallocate(h.twin, PUNCH_HOLE, offset, length),
            lambda: self.vol.fallocate(h.live, PUNCH_HOLE, offset, length),
        )

    @precondition(lambda self: self.handles)
    @rule(idx=st.integers(0, MAX_HANDLES - 1))
    def close_handle(self, idx):
        h = self.handles.pop(idx % len(self.handles))
        os.close(h.twin)
        self.vol.release(h.live)
        self.model.drop(h.ino)

    # -- snapshots ----------------------------------------------------------------------------

    @precondition(lambda self: len(self.alive) < MAX_SNAPSHOTS)
    @rule(watched=st.booleans())
    def create_snapshot(self, watched):
        attrs = capture_attrs(self.live, self.model)
        expected = ExpectedSnapshot(self.model.snapshot(), attrs)
        snap = self._create_snapshot()
        self.alive.append(Alive(snap, expected, self.steps, watched))

    @precondition(lambda self: self.alive)
    @rule(idx=st.integers(0, MAX_SNAPSHOTS - 1))
    def look_at_snapshot(self, idx):
        self._check_snapshot(self.alive[idx % len(self.alive)])

    @precondition(lambda self: self.alive)
    @rule(idx=st.integers(0, MAX_SNAPSHOTS - 1), pick=st.integers(0, 40))
    def open_in_snapshot(self, idx, pick):
        """Keep a snapshot file open across later live changes."""
        a = self.alive[idx % len(self.alive)]
        files = a.expected.tree.paths(REG)
        if not files or len(a.handles) >= 2:
            return
        path = files[pick % len(files)]
        a.handles.append((path, a.snap.open(path)))

    @precondition(lambda self: self.alive)
    @rule(idx=st.integers(0, MAX_SNAPSHOTS - 1))
    def destroy_snapshot(self, idx):
        a = self.alive.pop(idx % len(self.alive))
        self._check_snapshot(a)
        for _path, fh in a.handles:
            a.snap.release(fh)
        self._destroy(a.snap)
        self.destroyed.append(a.snap)
        cache = getattr(getattr(a.snap, "cache", None), "path", None)
        if cache is not None:
            assert not os.path.exists(cache), f"destroy left the cache file {cache}"
        if not self.alive:
            self._assert_retained_empty("after the last snapshot was destroyed")

    def _assert_retained_empty(self, when: str) -> None:
        area = os.path.join(self.backing, RETAINED)
        if os.path.isdir(area):
            left = [n for n in os.listdir(area) if n != LOCK_NAME]  # the by-path binding's lock file
            assert not left, f"{when}, the retained area still holds {left}"

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def live_and_twin_match_model(self):
        compare_view(self.twin, self.model, label="MODEL BUG: the twin directory")
        compare_view(self.live, self.model, label="live view")

    @invariant()
    def snapshots_match_their_time(self):
        for a in self.alive:
            if a.watched:
                self._check_snapshot(a)
            for path, fh in a.handles:
                data = bytes(a.expected.tree.inodes[a.expected.tree.lookup(path)].data)
                got = a.snap.read(fh, len(data) + 10, 0)
                if got != data:
                    raise AssertionError(
                        f"snapshot taken after step {a.step}: {path!r} read through a handle opened "
                        f"earlier gives {got!r}, expected {data!r}"
                    )

    def _check_snapshot(self, a: Alive) -> None:
        label = f"snapshot taken after step {a.step} ({'watched' if a.watched else 'unwatched'})"
        compare_view(SnapView(a.snap), a.expected.tree, attrs=a.expected.attrs, label=label)
        # what exists now but did not then must not be found by name either
        for path in set(self.model.paths()) - set(a.expected.attrs):
            try:
                a.snap.getattr(path)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise AssertionError(f"{label}: {path!r} gave {exc!r}, expected ENOENT") from exc
            else:
                raise AssertionError(f"{label}: {path!r} did not exist then, but the snapshot finds it")

    def teardown(self):
        closed = False
        try:
            for a in self.alive:
                self._check_snapshot(a)
            for h in self.handles:
                os.close(h.twin)
                self.vol.release(h.live)
            self.handles = []
            closed = True
            self._close()
            leftovers = [n for n in os.listdir(self.backing) if n == RETAINED or n.startswith("VSP_")]
            assert not leftovers, f"Provider.close() left {leftovers} in the volume"
            if os.path.isdir(self.state_dir):
                caches = [n for n in os.listdir(self.state_dir) if n.endswith(".vsp")]
                assert not caches, f"Provider.close() left cache files {caches}"
            compare_view(DirView(self.backing), self.model, label="backing directory after close")
        finally:
            if not closed:
                for h in self.handles:
                    os.close(h.twin)
                self._close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def _renameat2(old: str, new: str, flags: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    at_fdcwd = -100
    ret = libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), ctypes.c_uint(flags))
    if ret != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old)


EngineMachine.TestCase.settings = settings(
    max_examples=_examples(),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineModel = EngineMachine.TestCase
