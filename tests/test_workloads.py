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
