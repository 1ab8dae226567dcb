"""I/O errors from the backing filesystem are errors, never wrong data (issue 7).

The served volume's backing directory is a real FUSE mount of
tests/faultyfs.py (a pass-through that fails chosen operations with EIO,
chosen at run time through a rules file in the directory underneath), run
as its own process; a real ``vspfs serve`` daemon serves it. Checked:

* a live read of a failing file gives EIO to the reader;
* a drive read of an unchanged file whose backing read fails gives EIO,
  never zeros or another snapshot's data;
* a live overwrite that needs the old data preserved first, while that data
  cannot be read, fails with EIO and leaves the live file untouched and the
  snapshot valid (the write is refused rather than the snapshot broken);
* a failing write reaches the writer as EIO;
* a failing stat of one file gives EIO for it (not ENOENT: it exists in the
  snapshot) and does not make its neighbours unreachable in the drive;
* once the faults are cleared, the drive shows exactly the snapshot-time
  content and the live view the acknowledged content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Env, mounts_under, wait_until

pytestmark = pytest.mark.mount

HERE = Path(__file__).resolve().parent
SIZE = 1 << 20


def errno_of(fn: object, *args: object) -> int | None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def overwrite(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def faulty_volume() -> Iterator[tuple[Env, str]]:
    """(Env whose backing is a faultyfs mount, the directory underneath it)."""
    base = tempfile.mkdtemp(prefix="vspio")
    env = Env(base)
    under = env.mkdir("under")
    ffs = subprocess.Popen(
        [sys.executable, str(HERE / "faultyfs.py"), under, env.backing],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: env.backing in mounts_under(base) or ffs.poll() is not None, 20, "faultyfs to mount"
        )
        assert ffs.poll() is None, ffs.stderr.read() if ffs.stderr else ""
        yield env, under
    finally:
        env.teardown()  # stops the daemon, lazily unmounts everything under base (faultyfs too)
        ffs.send_signal(signal.SIGTERM)
        try:
            ffs.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ffs.kill()
            ffs.wait(timeout=20)
        if not mounts_under(base):
            subprocess.run(["rm", "-rf", base], check=False, timeout=60)


def faults(under: str, *rules: str) -> None:
    """Set the faultyfs rules (written underneath, never through a mount)."""
    with open(os.path.join(under, ".faults"), "w", encoding="utf-8") as f:
        f.write("".join(r + "\n" for r in rules))


def test_backing_io_errors_are_errors_not_wrong_data() -> None:
    with faulty_volume() as (env, under):
        original = {name: os.urandom(SIZE) for name in ("good", "rbad1", "rbad2", "rbad3", "sbad4", "wbad5")}
        for name, data in original.items():
            with open(os.path.join(env.backing, name), "wb") as f:
                f.write(data)
        env.start()
        drive = os.path.join(env.base, "drive")
        snap = env.json("snapshot", "create", env.backing, "--mount", drive)["snapshots"][0]
        live = env.live

        # reads that fail underneath fail for the reader, live and in the drive
        faults(under, "read rbad")
        assert errno_of(read, os.path.join(live, "rbad1")) == errno.EIO
        assert errno_of(read, os.path.join(drive, "rbad2")) == errno.EIO
        assert read(os.path.join(drive, "good")) == original["good"]

        # an overwrite whose old data cannot be preserved is refused; nothing changes
        assert errno_of(overwrite, os.path.join(live, "rbad3"), 4096, b"x" * 4096) == errno.EIO
        assert errno_of(os.truncate, os.path.join(live, "rbad3"), 10) == errno.EIO
        assert read(os.path.join(under, "rbad3")) == original["rbad3"]
        assert env.json("status", snap["id"])["state"] == "valid"

        # a write that fails underneath reaches the writer (its old data is preserved first)
        faults(under, "write wbad5")
        assert errno_of(overwrite, os.path.join(live, "wbad5"), 0, b"y" * 4096) == errno.EIO

        # a failing stat of one name leaves its neighbours reachable in the drive
        # (a new file makes the root's listing preserved, with lstat's inode numbers)
        with open(os.path.join(live, "new"), "wb") as f:
            f.write(b"new")
        faults(under, "getattr sbad4")
        assert errno_of(os.stat, os.path.join(live, "sbad4")) == errno.EIO
        assert errno_of(os.stat, os.path.join(drive, "sbad4")) == errno.EIO
        for name in ("good", "rbad1", "rbad3", "wbad5"):
            assert os.stat(os.path.join(drive, name)).st_size == SIZE
        assert sorted(os.listdir(drive)) == sorted(original)

        # faults cleared: the drive is the snapshot instant, the live view what was acknowledged
        faults(under)
        for name, data in original.items():
            assert read(os.path.join(drive, name)) == data, name
            assert read(os.path.join(live, name)) == data, name  # every failed write changed nothing
        assert read(os.path.join(live, "new")) == b"new"
        assert env.json("status", snap["id"])["state"] == "valid"
        env.ok("destroy", snap["id"])
        assert env.stop() == 0
        assert not env.cache_files()
