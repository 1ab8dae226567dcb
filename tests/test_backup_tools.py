"""Real backup tools reading virtual drives while the live view keeps changing.

Each test runs a real ``vspfs serve`` subprocess (helpers from
``tests/test_daemon_e2e.py`` via ``tests/daemon_helpers.py``): a temporary
backing directory served at a temporary live view, with a temporary cache
volume. Through the live view a tree is written with everything that backup
tools find hard -- hard links across directories, user xattrs, a sparse file
with a big hole, symlinks (also dangling), a fifo, empty directories,
non-UTF-8 names, files of many 64 KiB chunks, odd modes and owners -- and
its manifest recorded (tests/daemon_helpers.py: type, mode, owner, size,
sha256, symlink target, xattrs, mtime, link counts and hard-link groups).

* ``test_tar_rsync_restic_while_writers_run``: one snapshot mounted as a
  virtual drive; two writer processes keep overwriting, appending,
  truncating, deleting, renaming and creating through the live view while
  tar, rsync and restic back the drive up; each backup is restored and
  compared with the manifest, field by field as far as the tool preserves
  it; then the writers stop, the snapshot is destroyed, and nothing is left.
* ``test_five_snapshots_each_exact``: five snapshots taken at different
  moments, all mounted at once, each compared with its own manifest
  (exact times, inode numbers and link counts included).
* ``test_kill_9_during_heavy_cow_writes``: test_daemon_e2e already kills the
  daemon while one writer creates small files; here three writers overwrite
  and append across many snapshot-time chunks (every write a copy-on-write
  for two snapshots) and a reader streams from a virtual drive. Each writer
  logs every acknowledged write; after the kill every acknowledged byte
  must be in the backing directory, nobody may hang, no mount may remain,
  and ``vspfs cleanup`` removes the leftovers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    EXACT_FIELDS,
    Env,
    compare,
    leftovers,
    manifest,
    mounted_here,
    mounts_under,
    open_errno,
    run_tool,
    served,
    sparse,
    wait_until,
)

pytestmark = [pytest.mark.mount, pytest.mark.e2e]

CHUNK = 64 * 1024
SPARSE_SIZE = 64 << 20
#: operations each writer must have made during the backups (so they really ran meanwhile)
MIN_WRITER_OPS = 20


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")


@pytest.fixture
def env() -> Iterator[Env]:
    with served("vspk") as e:
        yield e


# ------------------------------------------------------------------ the tree


def populate(root: str, seed: int = 1) -> None:
    """Write the test tree through ``root`` (the live view)."""
    rng = random.Random(seed)
    j = os.path.join
    for d in ("hard", "other", "x", "empty/nested", "many", "modes", "new"):
        os.makedirs(j(root, d), exist_ok=True)
    Path(root, "hard", "a").write_bytes(rng.randbytes(300_000))
    os.link(j(root, "hard", "a"), j(root, "hard", "b"))
    os.link(j(root, "hard", "a"), j(root, "other", "c"))
    Path(root, "pair1").write_bytes(b"a pair of names\n")
    os.link(j(root, "pair1"), j(root, "x", "pair2"))
    os.setxattr(j(root, "pair1"), "user.pair", b"shared by both names")
    xf = j(root, "x", "xattr_file")
    Path(xf).write_bytes(b"has xattrs\n")
    os.setxattr(xf, "user.text", b"value")
    os.setxattr(xf, "user.binary", bytes(range(256)))
    os.setxattr(xf, "user.empty", b"")
    os.setxattr(j(root, "x"), "user.on_a_dir", b"dir value")
    with open(j(root, "sparse.img"), "wb") as f:
        f.write(rng.randbytes(2 * CHUNK))
        f.seek(40 << 20)
        f.write(rng.randbytes(CHUNK))
        f.truncate(SPARSE_SIZE)
    Path(root, "big1.bin").write_bytes(rng.randbytes(4 << 20))
    Path(root, "big2.bin").write_bytes(rng.randbytes(3 << 20))
    Path(root, "log.txt").write_bytes(b"".join(b"line %d\n" % i for i in range(5000)))
    os.symlink("hard/a", j(root, "sym"))
    os.symlink("does/not/exist", j(root, "dangling"))
    os.symlink("x", j(root, "dirsym"))
    os.mkfifo(j(root, "fifo"), 0o640)
    bdir = os.fsencode(root)
    Path(os.fsdecode(os.path.join(bdir, b"caf\xe9.txt"))).write_bytes(b"latin-1 name\n")
    os.mkdir(os.path.join(bdir, b"r\xe9pertoire"))
    Path(os.fsdecode(os.path.join(bdir, b"r\xe9pertoire", b"\xff\xfe-raw"))).write_bytes(b"raw bytes name\n")
    for i in range(60):
        Path(root, "many", f"f{i:03d}").write_bytes(rng.randbytes(rng.randrange(0, 3 * CHUNK)))
    for name, perm in (("private", 0o600), ("script", 0o755), ("ro", 0o444), ("setgid", 0o2755)):
        Path(root, "modes", name).write_bytes(name.encode())
        os.chmod(j(root, "modes", name), perm)
    os.chmod(j(root, "modes"), 0o750)
    os.chown(j(root, "modes", "private"), 1234, 5678)
    os.utime(j(root, "log.txt"), ns=(1_500_000_000_123_456_789, 1_400_000_000_987_654_321))
    os.utime(j(root, "empty", "nested"), ns=(1_300_000_000_000_000_000, 1_300_000_000_000_000_000))


# The writers: processes that keep changing the live view until a stop file
# appears, then print their operation counts (and any error) as JSON.
WRITER = r"""
import errno, json, os, random, sys, time
root, role, stop, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
j = os.path.join
ops, errors = {}, {}
def did(name):
    ops[name] = ops.get(name, 0) + 1
def pwrite(path, data, off):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)
def data_step(n):
    k = rng.randrange(8)
    if k == 0:
        f = rng.choice(["big1.bin", "big2.bin"])
        size = os.stat(j(root, f)).st_size
        pwrite(j(root, f), rng.randbytes(rng.randrange(1, 4 * 65536)), rng.randrange(0, max(1, size)))
        did("overwrite")
    elif k == 1:
        fd = os.open(j(root, "log.txt"), os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"appended %d\n" % n * rng.randrange(1, 200))
        os.close(fd)
        did("append")
    elif k == 2:
        os.truncate(j(root, "big2.bin"), rng.randrange(0, 5 << 20))
        did("truncate")
    elif k == 3:
        pwrite(j(root, "sparse.img"), rng.randbytes(65536), rng.randrange(0, 60 << 20))
        did("sparse")
    elif k == 4:
        pwrite(j(root, "hard", "b"), b"changed through b %d" % n, rng.randrange(0, 300000))
        did("hardlink")
    elif k == 5:
        with open(j(root, "log.txt"), "r+b") as f:
            f.write(b"HEAD %d" % n)
        did("head")
    elif k == 6:
        fd = os.open(j(root, "big1.bin"), os.O_RDWR)
        os.ftruncate(fd, os.fstat(fd).st_size + rng.randrange(1, 100000))
        os.close(fd)
        did("grow")
    else:
        os.setxattr(j(root, "big1.bin"), "user.changed", b"new value %d" % n)
        did("xattr")
moved = False
links = []
def names_step(n):
    global moved
    k = rng.randrange(9)
    many = j(root, "many")
    if k == 0:
        f = rng.choice(sorted(os.listdir(many)))
        os.unlink(j(many, f))
        with open(j(many, f), "wb") as fh:
            fh.write(rng.randbytes(rng.randrange(0, 100000)))
        did("recreate")
    elif k == 1:
        f = rng.choice(sorted(os.listdir(many)))
        os.rename(j(many, f), j(many, "renamed-%d" % n))
        did("rename")
    elif k == 2:
        src, dst = (j(root, "x"), j(root, "x-moved")) if not moved else (j(root, "x-moved"), j(root, "x"))
        os.rename(src, dst)
        moved = not moved
        did("rename_dir")
    elif k == 3:
        with open(j(root, "new", "n%d" % n), "wb") as fh:
            fh.write(rng.randbytes(rng.randrange(0, 200000)))
        did("create")
    elif k == 4:
        os.chmod(j(root, "pair1"), rng.choice([0o600, 0o640, 0o644, 0o666]))
        did("chmod")
    elif k == 5:
        name = j(root, "hard", "l%d" % n)
        os.link(j(root, "hard", "a"), name)
        links.append(name)
        if len(links) > 3:
            os.unlink(links.pop(0))
        did("link")
    elif k == 6:
        d = j(root, "empty", "d%d" % n)
        os.mkdir(d)
        if n % 2:
            os.rmdir(d)
        did("mkdir")
    elif k == 7:
        files = sorted(os.listdir(many))
        if len(files) > 20:
            os.unlink(j(many, rng.choice(files)))
            did("unlink")
        else:
            with open(j(many, "refill-%d" % n), "wb") as fh:
                fh.write(b"refill")
            did("refill")
    else:
        os.rename(j(root, "pair1"), j(root, "pair1.tmp"))
        os.rename(j(root, "pair1.tmp"), j(root, "pair1"))
        did("rename_back")
step = data_step if role == "data" else names_step
n = 0
deadline = time.monotonic() + 300
while not os.path.exists(stop) and time.monotonic() < deadline:
    n += 1
    try:
        step(n)
    except OSError as exc:
        key = "%s %s" % (step.__name__, errno.errorcode.get(exc.errno, exc.errno))
        errors[key] = errors.get(key, 0) + 1
    time.sleep(0.002)
print(json.dumps({"ops": ops, "errors": errors, "steps": n}))
"""


class Writers:
    """Writer processes on the live view; ``stop`` returns their reports."""

    def __init__(self, env: Env, roles: tuple[str, ...] = ("data", "names")) -> None:
        self.stopfile = os.path.join(env.base, "stop-writers")
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, env.live, role, self.stopfile, str(i + 10)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, role in enumerate(roles)
        ]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self, timeout: float = 60) -> list[dict[str, Any]]:
        Path(self.stopfile).touch()
        reports = []
        for p in self.procs:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate(timeout=30)
                pytest.fail(f"a writer did not stop within {timeout:g} s (hung on the live view?)")
            assert p.returncode == 0, f"writer failed: {err}"
            reports.append(json.loads(out))
        return reports

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


# --------------------------------------------------------------- the tools


def backup_tar(drive: str, work: str) -> tuple[str, dict[str, Any]]:
    archive = os.path.join(work, "backup.tar")
    out = os.path.join(work, "tar-restored")
    os.mkdir(out)
    made = run_tool(["tar", "--xattrs", "--sparse", "--numeric-owner", "-C", drive, "-cf", archive, "."])
    # exit 1 would mean "file changed as we read it": the drive must hold still
    assert made.returncode == 0, f"tar -c: {made.returncode} {made.stderr}"
    got = run_tool(
        ["tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-p", "-C", out, "-xf", archive]
    )
    assert got.returncode == 0, f"tar -x: {got.stderr}"
    return out, {"archive_bytes": os.path.getsize(archive)}


def backup_rsync(drive: str, work: str) -> tuple[str, dict[str, Any]]:
    out = os.path.join(work, "rsync-restored")
    done = run_tool(["rsync", "-aHAX", "--sparse", "--numeric-ids", drive + "/", out + "/"])
    assert done.returncode == 0, f"rsync: {done.returncode} {done.stderr}"
    return out, {}


def backup_restic(drive: str, work: str) -> tuple[str, dict[str, Any]]:
    repo = os.path.join(work, "restic-repo")
    out = os.path.join(work, "restic-restored")
    renv = {
        **os.environ,
        "RESTIC_PASSWORD": "vspfs-test",
        "RESTIC_REPOSITORY": repo,
        "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache"),
    }
    for args, cwd in (
        (["restic", "init", "-q"], work),
        (["restic", "backup", "-q", "."], drive),
        (["restic", "restore", "latest", "--target", out, "-q"], work),
    ):
        done = run_tool(args, cwd=cwd, env=renv)
        assert done.returncode == 0, f"{' '.join(args)}: {done.returncode} {done.stderr}"
    return out, {}


#: what each tool restores, checked against the manifest
TOOLS = {
    "tar": backup_tar,
    "rsync": backup_rsync,
    "restic": backup_restic,
}


# ------------------------------------------------------------------- tests


def test_tar_rsync_restic_while_writers_run(env: Env) -> None:
    need("tar", "rsync", "restic")
    populate(env.live)
    expected = manifest(env.live)
    assert expected["//groups"]["groups"] == [("hard/a", "hard/b", "other/c"), ("pair1", "x/pair2")]
    assert sparse(expected["sparse.img"]), "the backing file system did not keep the hole"

    drive = os.path.join(env.base, "drive")
    (snap,) = env.json("snapshot", "create", env.live, "--mount", drive)["snapshots"]
    work = env.mkdir("work")
    writers = Writers(env)
    timings: dict[str, float] = {}
    try:
        time.sleep(0.5)  # let the writers get going
        results = {}
        for name, tool in TOOLS.items():
            t0 = time.monotonic()
            restored, info = tool(drive, work)
            timings[name] = time.monotonic() - t0
            assert writers.alive(), "a writer stopped during the backups"
            results[name] = (manifest(restored), info)
    finally:
        reports = writers.stop()
    for report in reports:
        assert report["errors"] == {}, f"a writer got errors through the live view: {report}"
        assert sum(report["ops"].values()) >= MIN_WRITER_OPS, f"too few changes during the backups: {report}"

    # the live view really changed under the backups
    live_now = manifest(env.live, contents=False)
    assert compare(expected, live_now, fields=("size", "mode"), nlink=False, groups=False) != []

    for name, (got, _info) in results.items():
        problems = compare(expected, got)
        assert problems == [], f"{name}: restored tree differs from the snapshot:\n" + "\n".join(
            problems[:40]
        )
    # sparseness: rsync --sparse and tar --sparse write holes when restoring; restic 0.14 cannot
    assert sparse(results["rsync"][0]["sparse.img"])
    assert sparse(results["tar"][0]["sparse.img"])

    status = env.json("status", snap["id"])
    assert status["state"] == "valid", status
    assert status["chunks_preserved"] > 0 and status["pinned_bytes"] > 0, status

    env.json("destroy", snap["id"])
    wait_until(lambda: mounted_here(env) == [], 30, "destroy to unmount the drive")
    assert leftovers(env) == {"mounts": [env.live], "cache_files": [], "retained": []}
    assert env.stop() == 0, env.log_text()
    assert leftovers(env) == {"mounts": [], "cache_files": [], "retained": None}
    print(f"backup timings (s): { {k: round(v, 2) for k, v in timings.items()} }")


def mutate(root: str, step: int) -> None:
    """Deterministic changes between two snapshots (data, metadata and names)."""
    rng = random.Random(100 + step)
    j = os.path.join
    with open(j(root, "big1.bin"), "r+b") as f:
        for _ in range(5):
            f.seek(rng.randrange(0, 4 << 20))
            f.write(rng.randbytes(rng.randrange(1, 2 * CHUNK)))
    with open(j(root, "log.txt"), "ab") as f:
        f.write(b"step %d\n" % step * 100)
    os.truncate(j(root, "big2.bin"), rng.randrange(1 << 20, 4 << 20))
    os.unlink(j(root, "many", f"f{step:03d}"))
    os.rename(j(root, "many", f"f{step + 10:03d}"), j(root, "many", f"moved{step}"))
    Path(root, "new", f"s{step}").write_bytes(rng.randbytes(rng.randrange(0, 3 * CHUNK)))
    os.chmod(j(root, "pair1"), 0o600 + step)
    os.setxattr(j(root, "x", "xattr_file"), "user.text", b"step %d" % step)
    if step % 2:
        os.link(j(root, "hard", "a"), j(root, "hard", f"extra{step}"))
    elif os.path.lexists(j(root, "hard", "b")):
        os.unlink(j(root, "hard", "b"))
    os.rename(j(root, "x"), j(root, f"x{step}"))
    os.rename(j(root, f"x{step}"), j(root, "x"))
    os.mkdir(j(root, "empty", f"e{step}"))
    with open(j(root, "sparse.img"), "r+b") as f:
        f.seek(rng.randrange(0, SPARSE_SIZE - CHUNK))
        f.write(rng.randbytes(CHUNK))


def test_five_snapshots_each_exact(env: Env) -> None:
    populate(env.live, seed=5)
    snaps = []
    exact = tuple(f for f in EXACT_FIELDS if f != "ino")
    for step in range(5):
        mutate(env.live, step)
        expected = manifest(env.live)
        drive = os.path.join(env.base, f"drive{step}")
        (snap,) = env.json("snapshot", "create", env.live, "--mount", drive)["snapshots"]
        snaps.append((snap["id"], drive, expected))
        time.sleep(0.02)  # the next changes get other timestamps
    mutate(env.live, 5)
    assert len(env.cache_files()) == 5
    for i, (sid, drive, expected) in enumerate(snaps):
        problems = compare(expected, manifest(drive), fields=(*exact, "ino"))
        assert problems == [], f"snapshot {i} ({sid}) differs from its moment:\n" + "\n".join(problems[:40])
    listed = env.json("list")["snapshots"]
    assert [s["id"] for s in listed] == [s[0] for s in snaps]
    assert all(s["state"] == "valid" for s in listed)
    env.json("destroy", *[s[0] for s in snaps])
    wait_until(lambda: mounted_here(env) == [], 30, "destroy to unmount the drives")
    assert leftovers(env) == {"mounts": [env.live], "cache_files": [], "retained": []}


# --------------------------------------------------------------- kill -9

# One writer per file: overwrites across many snapshot-time chunks, appends,
# and now and then an fsync. Before each write it logs its intent, after it
# the acknowledgement with the offset the write landed at; a log line is one
# os.write on an O_APPEND file outside the live view.
COW_WRITER = r"""
import errno, os, random, sys
path, logpath, wid = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
def note(text):
    os.write(log, (text + "\n").encode())
def payload(n, length):
    unit = b"<%d:%d>" % (wid, n)
    return (unit * (length // len(unit) + 1))[:length]
fd = os.open(path, os.O_WRONLY)
afd = os.open(path, os.O_WRONLY | os.O_APPEND)
n = 0
try:
    while True:
        n += 1
        rng = random.Random("%d:%d" % (wid, n))
        length = rng.randrange(1, 300000)
        if rng.random() < 0.2:
            note("I %d append %d" % (n, length))
            done = os.write(afd, payload(n, length))
            end = os.lseek(afd, 0, os.SEEK_CUR)
            note("A %d %d %d" % (n, end - done, done))
        else:
            off = rng.randrange(0, 6 << 20)
            note("I %d at %d %d" % (n, off, length))
            done = os.pwrite(fd, payload(n, length), off)
            note("A %d %d %d" % (n, off, done))
        if n % 25 == 0:
            os.fsync(fd)
except OSError as exc:
    note("E %s" % errno.errorcode.get(exc.errno, exc.errno))
"""

# Streams the drive's files through fds opened once (after the kill it must
# not find the empty directory underneath instead), dropping their cached
# pages after each pass so that reads keep reaching the daemon; stops at the
# first error or when the stop file appears.
READER = r"""
import os, sys
drive, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
fds = [os.open(os.path.join(drive, name), os.O_RDONLY) for name in sorted(os.listdir(drive))]
assert fds, "nothing on the drive"
open(ready, "w").close()
try:
    while not os.path.exists(stop):
        for fd in fds:
            off = 0
            while True:
                got = os.pread(fd, 1 << 20, off)
                if not got:
                    break
                off += len(got)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
except OSError as exc:
    print("reader stopped:", exc.errno, flush=True)
"""


def cow_payload(wid: int, n: int, length: int) -> bytes:
    unit = b"<%d:%d>" % (wid, n)
    return (unit * (length // len(unit) + 1))[:length]


def replay(initial: bytes, log_text: str, wid: int) -> tuple[bytearray, list[tuple[int, bytes]], int]:
    """Replay a writer's log: (content after every acknowledged byte, maybe-writes, acks).

    A write the kernel acknowledged only in part (a short count: the daemon
    died between the WRITE requests it was split into) acknowledges that
    part; its rest, and a write that never got an answer, are *maybe*
    writes: each of their bytes may hold either the old or the new value.
    """
    data = bytearray(initial)
    maybes: list[tuple[int, bytes]] = []
    pending: tuple[int, str, int, int] | None = None
    acks = 0

    def apply(buf: bytearray, off: int, chunk: bytes) -> None:
        if off > len(buf):
            buf.extend(b"\0" * (off - len(buf)))
        buf[off : off + len(chunk)] = chunk

    for line in log_text.splitlines():
        parts = line.split()
        if parts[0] == "I":
            n, how = int(parts[1]), parts[2]
            length = int(parts[-1])
            pending = (n, how, int(parts[3]) if how == "at" else -1, length)
        elif parts[0] == "A":
            assert pending is not None and pending[0] == int(parts[1]), line
            n, off, done = int(parts[1]), int(parts[2]), int(parts[3])
            full = cow_payload(wid, n, pending[3])
            apply(data, off, full[:done])
            if done < len(full):
                maybes.append((off + done, full[done:]))
            pending = None
            acks += 1
    if pending is not None:
        n, how, off, length = pending
        maybes.append((len(data) if how == "append" else off, cow_payload(wid, n, length)))
    return data, maybes, acks


def matches(actual: bytes, acked: bytearray, maybes: list[tuple[int, bytes]]) -> str | None:
    """None if ``actual`` holds every acknowledged byte; else what is wrong.

    Bytes covered by a maybe-write may hold its data instead; bytes past the
    acknowledged end must come from a maybe-write (or be the zeros of a gap
    that one of them opened).
    """
    if actual == acked:
        return None
    limit = max([len(acked)] + [off + len(d) for off, d in maybes])
    if not len(acked) <= len(actual) <= limit:
        return f"size {len(actual)} is outside [{len(acked)}, {limit}]"
    block = 1 << 16
    for start in range(0, len(actual), block):
        if actual[start : start + block] == acked[start : start + block]:
            continue
        for i in range(start, min(start + block, len(actual))):
            if i < len(acked) and actual[i] == acked[i]:
                continue
            if any(off <= i < off + len(d) and d[i - off] == actual[i] for off, d in maybes):
                continue
            if i >= len(acked) and actual[i] == 0:
                continue
            return f"byte {i} is {actual[i]} (acknowledged {acked[i] if i < len(acked) else None})"
    return None


def test_kill_9_during_heavy_cow_writes(env: Env) -> None:
    rng = random.Random(9)
    initial = {i: rng.randbytes((4 << 20) + i * 1000) for i in range(3)}
    for i, data in initial.items():
        Path(env.live, f"w{i}.bin").write_bytes(data)
    drive = os.path.join(env.base, "drive")
    env.json("snapshot", "create", env.live, "--mount", drive)
    env.json("snapshot", "create", env.live)  # every pre-image goes to two cache files
    logs = {i: os.path.join(env.base, f"writer{i}.log") for i in initial}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", COW_WRITER, os.path.join(env.live, f"w{i}.bin"), logs[i], str(i)]
        )
        for i in initial
    ]
    stop, ready = os.path.join(env.base, "stop-reader"), os.path.join(env.base, "reader-ready")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, drive, stop, ready], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_until(
            lambda: os.path.exists(ready) or reader.poll() is not None, 60, "the reader to open the drive"
        )
        assert reader.poll() is None, "the reader could not read the drive"

        def acked(i: int) -> int:
            try:
                return Path(logs[i]).read_text().count("\nA ")
            except FileNotFoundError:
                return 0

        wait_until(lambda: all(acked(i) >= 40 for i in initial), 120, "40 acknowledged writes per writer")
        assert all(w.poll() is None for w in writers), "a writer failed before the kill"
        env.kill()
        Path(stop).touch()
        for w in (*writers, reader):
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("a process using the mounts hung after kill -9 of the daemon")
    finally:
        for w in (*writers, reader):
            if w.poll() is None:
                w.send_signal(signal.SIGKILL)
                w.wait(timeout=30)

    total = 0
    for i, data in initial.items():
        text = Path(logs[i]).read_text()
        assert "\nE " in text, f"writer {i} never saw the daemon go: {text[-200:]}"
        expected, maybes, acks = replay(data, text, i)
        total += acks
        problem = matches(Path(env.backing, f"w{i}.bin").read_bytes(), expected, maybes)
        assert problem is None, (
            f"w{i}.bin lost acknowledged data: {problem}; log ends {text.splitlines()[-4:]}; "
            f"file ends {Path(env.backing, f'w{i}.bin').read_bytes()[-30:]!r}"
        )
    assert total >= 120

    # no mount outlives the daemon (auto_unmount, then the janitor); if one
    # does, cleanup must still remove it, and the test says what was stuck
    deadline = time.monotonic() + 30
    while mounts_under(env.base) and time.monotonic() < deadline:
        time.sleep(0.1)
    stuck = {mp: open_errno(mp) for mp in mounts_under(env.base)}
    stale = sorted(env.cache_files())
    assert len(stale) == 2, "a killed daemon leaves its cache files (stale)"
    result = env.json("cleanup")
    assert result["daemon"] is False
    assert set(stale) <= set(result["removed"]), result
    assert sorted(result["unmounted"]) == sorted(stuck), result
    assert leftovers(env) == {"mounts": [], "cache_files": [], "retained": None}
    assert not stuck, (
        f"mounts left 30 s after kill -9 (errno of open(); cleanup removed them): {stuck}{env.log_text()}"
    )
