"""Real applications' I/O patterns on a live view while snapshots are taken.

The other end-to-end tests drive the live view with plain reads, writes and
renames. Applications do more: databases open with O_DIRECT, git rewrites
packs and renames lock files, sqlite keeps a write-ahead log and a reader
beside the writer. Each test here runs such a workload through the live view
of one real ``vspfs serve`` subprocess (``served()`` from
tests/daemon_helpers.py: teardown always unmounts), and checks two things:

* the application sees what it would see on a plain directory (the same
  workload on a plain twin directory, where exact equality is expected);
* every virtual drive equals the live view at its snapshot instant (the
  workload is paused, the live view's manifest taken, then the snapshot).

Four of the tests hold defects these workloads found (each fails without
its fix; docs/conformance.md, "Applications on the live view"): O_DIRECT
I/O, the umask under a default ACL, ACL entries in permission checks (as
uid 65534), and fsync of a directory (over tests/faultyfs.py, whose failing
directory sync proves the sync reached the backing filesystem).

Every wait has a timeout; nothing here touches a mount from the daemon's
process (the daemon is a subprocess).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import EXACT_FIELDS, Env, compare, manifest, run_tool, served
from test_io_errors import errno_of, faults, faulty_volume

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.mount


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """One daemon for the module, open to other users (for the ACL checks);
    each test works in its own subdirectory."""
    with served("vspw", allow_other=True) as e:
        yield e


@pytest.fixture
def twin() -> Iterator[str]:
    """A plain directory of the same filesystem as the backing, for the differential runs."""
    d = tempfile.mkdtemp(prefix="vspw-twin")
    os.chmod(d, 0o755)  # reachable by another user, as the live view is
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def workdir(env: Env, name: str) -> str:
    """A fresh directory in the live view for one test."""
    path = os.path.join(env.live, name)
    os.mkdir(path)
    return path


def snapshot(env: Env, name: str) -> tuple[str, str]:
    """Create a snapshot mounted at a new directory; (snapshot id, drive)."""
    drive = env.mkdir(f"drive-{name}")
    out = json.loads(env.ok("snapshot", "create", env.live, "--mount", drive, "--json"))
    return out["snapshots"][0]["id"], drive


def aligned(size: int, fill: bytes) -> mmap.mmap:
    """A page-aligned buffer, as O_DIRECT requires of the caller on a local filesystem."""
    buf = mmap.mmap(-1, size)
    buf.write(fill * (size // len(fill)))
    return buf


# ------------------------------------------------------------------ O_DIRECT


def _direct_io(path: str) -> list[object]:
    """What a database-like O_DIRECT user does; the observable results."""
    got: list[object] = []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        got.append(os.pwritev(fd, [aligned(1 << 20, b"A")], 0))
        got.append(os.pwritev(fd, [memoryview(aligned(1 << 16, b"B"))], 1 << 16))
        got.append(os.pwritev(fd, [aligned(1 << 20, b"C")], 1 << 20))
        back = aligned(3 << 20, b"\0")
        n = os.preadv(fd, [back], 0)
        got += [n, back[:n].count(b"A"), back[:n].count(b"B"), back[:n].count(b"C")]
        os.fsync(fd)
        got.append(os.fstat(fd).st_size)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        got.append(len(f.read()))
    return got


def test_o_direct_reads_and_writes_work_as_on_a_plain_directory(env: Env, twin: str) -> None:
    """O_DIRECT (databases, ``dd oflag=direct``) works through the live view.

    Before the fix the backing file was opened with O_DIRECT too, and the
    daemon's unaligned buffers made every such write fail with EINVAL.
    The drive of a snapshot taken between two O_DIRECT writes shows the
    first one only.
    """
    expected = _direct_io(os.path.join(twin, "db"))
    work = workdir(env, "odirect")
    path = os.path.join(work, "db")
    assert _direct_io(path) == expected

    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        sid, drive = snapshot(env, "odirect")
        assert os.pwritev(fd, [aligned(1 << 16, b"D")], 0) == 1 << 16
    finally:
        os.close(fd)
    with open(os.path.join(drive, "odirect", "db"), "rb") as f:
        old = f.read(1 << 16)
    with open(path, "rb") as f:
        new = f.read(1 << 16)
    assert (old, new) == (b"A" * (1 << 16), b"D" * (1 << 16))
    env.ok("destroy", sid)


# ------------------------------------------------------------ directory fsync


def test_fsync_of_a_directory_reaches_the_backing_directory() -> None:
    """fsync(2) of a directory in the live view flushes the backing directory.

    sqlite, git and every write-then-rename program sync the directory to
    make a create, rename or unlink durable. Before the fix the adapter had
    no fsyncdir: the kernel took libfuse's ENOSYS as "nothing to do" and
    answered success without flushing anything. The backing here is
    tests/faultyfs.py, so a failing directory sync underneath proves the
    sync got there: it must reach the application as EIO.
    """
    with faulty_volume() as (env, under):
        env.start()
        work = os.path.join(env.live, "dir")
        os.mkdir(work)
        Path(work, "file").write_bytes(b"data")
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            faults(under, "fsyncdir /dir")
            assert errno_of(os.fsync, fd) == errno.EIO
            assert errno_of(os.fdatasync, fd) == errno.EIO
            faults(under)
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------- umask, default ACLs


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the kernel's xattr format: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


#: user::rwx user:65534:rwx group::rwx mask::rwx other::r-- (tags from linux/posix_acl.h)
DEFAULT_ACL = _acl((0x01, 7, 0xFFFFFFFF), (0x02, 7, 65534), (0x04, 7, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF))
DEFAULT_ACL += _acl((0x20, 4, 0xFFFFFFFF))[4:]


def _create_under_umask(root: str) -> dict[str, object]:
    """Create files, directories and fifos with umask 022 and 077, with and
    without a default ACL on the parent; their modes and access ACLs."""
    out: dict[str, object] = {}
    for parent, acl in (("acl", DEFAULT_ACL), ("plain", None)):
        pdir = os.path.join(root, parent)
        os.mkdir(pdir, 0o777)
        if acl is not None:
            os.setxattr(pdir, "system.posix_acl_default", acl)
        for mask in (0o022, 0o077, 0o002):
            old = os.umask(mask)
            try:
                os.close(os.open(os.path.join(pdir, f"f{mask:o}"), os.O_CREAT | os.O_WRONLY, 0o666))
                os.mkdir(os.path.join(pdir, f"d{mask:o}"), 0o777)
                os.mkfifo(os.path.join(pdir, f"p{mask:o}"), 0o666)
            finally:
                os.umask(old)
        for name in sorted(os.listdir(pdir)):
            path = os.path.join(pdir, name)
            try:
                access: bytes | None = os.getxattr(path, "system.posix_acl_access")
            except OSError:
                access = None
            out[f"{parent}/{name}"] = (oct(os.lstat(path).st_mode), access)
    return out


def test_umask_and_default_acls_give_the_modes_of_a_plain_directory(env: Env, twin: str) -> None:
    """New objects in a directory with a default ACL ignore the umask, elsewhere they honour it.

    Before the fix the kernel's FUSE client applied the umask before vspfs
    saw the mode, so a file created with umask 022 in a directory whose
    default ACL grants group write got an ACL mask of r-- (rw- on a plain
    directory): a shared directory stopped being writable for its group.
    """
    expected = _create_under_umask(twin)
    if not any(v[1] for v in expected.values()):  # type: ignore[index]
        pytest.skip("the filesystem of the temporary directory has no POSIX ACLs")
    assert _create_under_umask(workdir(env, "umask")) == expected


# ------------------------------------------------------- ACL permission checks

_ANY = 0xFFFFFFFF  # the id of entries that name no user or group
NOBODY = 65534


def _reads_as_nobody(paths: list[str]) -> list[str]:
    """For each path, what reading it as uid/gid 65534 gives: its content, or
    EACCES. Through cat: the test's Python may live where 65534 cannot go."""
    out = []
    for path in paths:
        done = run_tool(["cat", path], user=NOBODY, group=NOBODY, extra_groups=[], timeout=60)
        if done.returncode == 0:
            out.append(done.stdout.strip())
        else:
            assert "Permission denied" in done.stderr, done.stderr
            out.append("EACCES")
    return out


def _acl_tree(root: str) -> list[str]:
    """A directory and files whose access for uid 65534 only ACL entries decide."""
    d = os.path.join(root, "shared")
    os.mkdir(d)
    # the owner only by mode; user 65534 may list and enter by an ACL entry
    os.setxattr(
        d,
        "system.posix_acl_access",
        _acl((1, 7, _ANY), (2, 5, NOBODY), (4, 0, _ANY), (0x10, 5, _ANY), (0x20, 0, _ANY)),
    )
    granted, denied = os.path.join(d, "granted"), os.path.join(d, "denied")
    Path(granted).write_text("granted\n")
    Path(denied).write_text("denied\n")
    # 0600 by the mode bits, readable by 65534 through its entry
    os.setxattr(
        granted,
        "system.posix_acl_access",
        _acl((1, 6, _ANY), (2, 4, NOBODY), (4, 0, _ANY), (0x10, 4, _ANY), (0x20, 0, _ANY)),
    )
    # readable by everybody by the mode bits, except 65534 by its entry
    os.setxattr(
        denied,
        "system.posix_acl_access",
        _acl((1, 6, _ANY), (2, 0, NOBODY), (4, 4, _ANY), (0x10, 4, _ANY), (0x20, 4, _ANY)),
    )
    return [granted, denied]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as uid 65534")
def test_acl_entries_decide_access_on_the_live_view_and_on_drives(env: Env, twin: str) -> None:
    """An ACL entry that grants or denies a user works as on a plain directory.

    The mounts use default_permissions: the kernel checks access itself, and
    before the fix it looked at the mode bits only (libfuse does not ask for
    POSIX ACLs unless told), so user 65534 could not read a file an ACL
    entry gave it, and could read one an entry refused it. The drive keeps
    deciding by the ACL of its instant after the live ACL changed.
    """
    expected = _reads_as_nobody(_acl_tree(twin))
    assert expected == ["granted", "EACCES"], "this filesystem does not enforce POSIX ACLs"
    paths = _acl_tree(workdir(env, "acl"))
    assert _reads_as_nobody(paths) == expected
    sid, drive = snapshot(env, "acl")
    os.removexattr(paths[0], "system.posix_acl_access")  # back to plain 0600: 65534 loses access
    os.removexattr(paths[1], "system.posix_acl_access")  # back to plain 0644: 65534 gains it
    assert _reads_as_nobody(paths) == ["EACCES", "denied"]
    in_drive = [os.path.join(drive, "acl", "shared", os.path.basename(p)) for p in paths]
    assert _reads_as_nobody(in_drive) == expected
    env.ok("destroy", sid)


# ----------------------------------------------------------------------- git

GIT_ENV = {
    "GIT_AUTHOR_NAME": "vspfs",
    "GIT_AUTHOR_EMAIL": "vspfs@example.invalid",
    "GIT_COMMITTER_NAME": "vspfs",
    "GIT_COMMITTER_EMAIL": "vspfs@example.invalid",
    "GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}

#: each step one shell script run in the work directory; a snapshot after each
GIT_STEPS = (
    "git init -q -b main repo && cp -r {src} repo/src && cd repo && git add -A && git commit -qm one",
    "cd repo && for i in 1 2 3; do echo $i >> src/cli.py; git commit -qam c$i; done",
    "cd repo && git gc -q",
    "cd repo && git checkout -qb side && git rm -rq src/cachefile.py && git commit -qm rm"
    " && git checkout -q main",
    "cd repo && git merge -q side -m merge && git repack -qadf && git prune",
    "cd repo && git gc -q --aggressive --prune=now",
)


def _git_steps(work: str, after_step: Callable[[int], None] | None = None) -> list[str]:
    """Run GIT_STEPS in ``work``; call ``after_step(i)`` after each; git's final answers."""
    env = {**os.environ, **GIT_ENV}
    for i, step in enumerate(GIT_STEPS):
        script = step.format(src=REPO / "vspfs")
        done = run_tool(["sh", "-ec", script], cwd=work, env=env, timeout=120)
        assert done.returncode == 0, f"step {i}: {done.stderr}"
        if after_step is not None:
            after_step(i)
    out = []
    for args in (["fsck", "--full", "--strict"], ["log", "--format=%H %s"], ["count-objects", "-v"]):
        done = run_tool(["git", "-C", os.path.join(work, "repo"), *args], env=env, timeout=120)
        out.append(f"{done.returncode} {done.stdout} {done.stderr}".replace(work, "WORK"))
    return out


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (apt-get install git)")
def test_git_commits_gc_and_repack_with_a_snapshot_after_every_step(env: Env, twin: str) -> None:
    """git in the live view answers as on a plain directory, and every drive is its instant.

    git writes loose objects, renames lock files over refs, rewrites packs
    and deletes what gc made unreachable: each step changes what the
    snapshots before it still need. Every drive is compared, after all steps,
    with the live view's manifest at its instant, exact to the nanosecond
    with inode numbers, and git fsck must pass in it.
    """
    expected = _git_steps(twin)
    work = workdir(env, "git")
    drives: list[tuple[str, str, dict[str, object]]] = []

    def snap(i: int) -> None:
        before = manifest(work)
        sid, drive = snapshot(env, f"git{i}")
        drives.append((sid, drive, before))

    assert _git_steps(work, snap) == expected
    for sid, drive, before in drives:
        here = os.path.join(drive, "git")
        assert compare(before, manifest(here), fields=EXACT_FIELDS) == [], drive  # type: ignore[arg-type]
        fsck = run_tool(["git", "-C", os.path.join(here, "repo"), "fsck", "--full"], timeout=120)
        assert fsck.returncode == 0, fsck.stderr
        env.ok("destroy", sid)


# -------------------------------------------------------------------- sqlite


def _sqlite_workload(path: str, mode: str, during: Callable[[int], None] | None = None) -> tuple[object, ...]:
    """Transactions of a writer with a concurrent reader; ``during(committed)`` is
    called a few times while they run. The final state as sqlite reports it."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"pragma journal_mode={mode}")
    db.execute("create table t(i integer primary key, v blob)")
    stop = threading.Event()
    problems: list[object] = []
    reads = [0]

    def reader() -> None:
        r = sqlite3.connect(path, timeout=30)
        while not stop.is_set():
            try:
                n, total = r.execute("select count(*), coalesce(sum(i), 0) from t").fetchone()
            except sqlite3.OperationalError as exc:  # a busy rollback-journal reader may retry
                if "locked" not in str(exc):
                    problems.append(str(exc))
                continue
            reads[0] += 1
            if total != n * (n - 1) // 2:  # every transaction adds 10 consecutive keys
                problems.append((n, total))
        r.close()

    thread = threading.Thread(target=reader)
    thread.start()
    committed = [0]
    try:
        for batch in range(60):
            db.execute("begin immediate")
            for k in range(10):
                db.execute("insert into t values (?, randomblob(2000))", (batch * 10 + k,))
            db.execute("update t set v = randomblob(300) where i % 7 = ?", (batch % 7,))
            db.execute("commit")
            committed[0] = batch + 1
            if during is not None and batch % 15 == 7:
                during(committed[0])
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the sqlite reader did not stop"
    state = (
        db.execute("pragma integrity_check").fetchone(),
        db.execute("select count(*), sum(i), sum(length(v)) from t").fetchone(),
        problems,
        reads[0] > 0,
    )
    db.close()
    return state


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_sqlite_with_a_reader_and_snapshots_during_transactions(env: Env, twin: str, mode: str) -> None:
    """sqlite (WAL with its shared-memory file, or a rollback journal) with a
    concurrent reader behaves as on a plain directory; a copy of each drive's
    database (with its journal) opens, passes integrity_check and holds whole
    transactions only: between what had committed before and after the snapshot.
    """
    expected = _sqlite_workload(os.path.join(twin, "db"), mode)
    work = workdir(env, f"sqlite-{mode}")
    taken: list[tuple[str, str, int]] = []

    def during(before: int) -> None:
        sid, drive = snapshot(env, f"sqlite-{mode}-{len(taken)}")
        taken.append((sid, drive, before))

    got = _sqlite_workload(os.path.join(work, "db"), mode, during)
    assert got[0] == expected[0] == ("ok",)
    assert got[1][:2] == expected[1][:2] and got[2] == [] and got[3]  # type: ignore[index]
    for sid, drive, before in taken:
        copy = tempfile.mkdtemp(prefix="vspw-sql")
        try:
            for name in os.listdir(os.path.join(drive, f"sqlite-{mode}")):
                if name.startswith("db") and not name.endswith("-shm"):
                    shutil.copy2(os.path.join(drive, f"sqlite-{mode}", name), copy)
            db = sqlite3.connect(os.path.join(copy, "db"))
            assert db.execute("pragma integrity_check").fetchone() == ("ok",)
            (rows,) = db.execute("select count(*) from t").fetchone()
            db.close()
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        # the snapshot was taken between two transactions of this thread
        assert rows == before * 10, (drive, rows, before)
        env.ok("destroy", sid)
