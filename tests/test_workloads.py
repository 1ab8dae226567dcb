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

Every wait has a timeout; nothing here touches a mount from the daemon's
process (the daemon is a subprocess).
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator

import pytest
from daemon_helpers import Env, served

pytestmark = pytest.mark.mount


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """One daemon for the module: each test works in its own subdirectory."""
    with served("vspw") as e:
        yield e


@pytest.fixture
def twin() -> Iterator[str]:
    """A plain directory of the same filesystem as the backing, for the differential runs."""
    d = tempfile.mkdtemp(prefix="vspw-twin")
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
