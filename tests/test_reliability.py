"""Reliability and security gaps of issue 7 not covered by the other test files.

A real ``vspfs serve`` subprocess (``served`` from daemon_helpers) and the CLI:

* the cache maximum (``--max-cache-size``) reached, and the cache volume
  (a small tmpfs) filling up, while live writes go on: every live write
  succeeds and lands, the snapshot turns invalid, its drive reads give EIO;
* a busy or non-empty mount directory and a directory already holding a
  drive: one-line error, exit code 8 (docs/cli.md); mounting an invalid
  snapshot: exit 6;
* names with a newline, invalid UTF-8 and 255 bytes, through the live view
  and in a snapshot drive;
* symlink loops and symlinks pointing outside the volume stay symlinks;
* permissions on a drive equal the live volume's (a 0600 root file is
  unreadable for uid 65534 on both); a drive mounted without --allow-other
  cannot be entered by another user;
* cleanup never deletes a foreign ``VSP_*.vsp`` file;
* every drive's auto_unmount helper (a fusermount3 child) and its socket go
  with the drive;
* ``vspfs serve`` without fusermount3: exit 8, one line, nothing left;
* kill -9 during copy-on-write overwrites: every acknowledged write is on
  the backing volume, no other byte changed, the next start cleans up.

Every wait has a timeout; teardown kills the daemon and lazily unmounts
everything under the temporary directory (and the tmpfs).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from daemon_helpers import Env, mounts_under, served, wait_until

pytestmark = pytest.mark.mount

MiB = 1 << 20


def err_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vspfs: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def read_errno(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            f.read()
    except OSError as exc:
        return exc.errno
    return None


def snapshot(env: Env, *args: str) -> dict:
    return env.json("snapshot", "create", env.backing, *args)["snapshots"][0]


def status(env: Env, sid: str) -> dict:
    return env.json("status", sid)


def write_all(path: str, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------ cache limits


def test_cache_maximum_reached_invalidates_but_live_writes_land() -> None:
    with served("vspr") as env:
        old = os.urandom(4 * MiB)
        with open(os.path.join(env.live, "big"), "wb") as f:
            f.write(old)
        drive = os.path.join(env.base, "drive")
        snap = snapshot(env, "--max-cache-size", "1M", "--mount", drive)
        assert snap["state"] == "valid"
        new = os.urandom(4 * MiB)
        write_all(os.path.join(env.live, "big"), new)  # must not fail: policy invalidate
        with open(os.path.join(env.backing, "big"), "rb") as f:
            assert f.read() == new
        st = status(env, snap["id"])
        assert st["state"] == "invalid", st
        assert read_errno(os.path.join(drive, "big")) == errno.EIO
        # mounting it again is refused (exit 6, "invalid"), and leaves no directory or mount
        again = os.path.join(env.base, "again")
        done = env.run("mount", snap["id"], again)
        assert done.returncode == 6, done.stderr
        assert snap["id"] in err_line(done) and "invalid" in err_line(done)
        assert not os.path.exists(again) and not mounts_under(again)
        env.ok("destroy", snap["id"])
        assert env.stop() == 0
        assert not env.cache_files()


@contextlib.contextmanager
def tmpfs(path: str, size: str) -> Iterator[str]:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30, check=False)


def test_cache_volume_fills_up_mid_backup() -> None:
    base = tempfile.mkdtemp(prefix="vspr")
    env = Env(base)
    try:
        with tmpfs(env.cache, "2m"):
            env.start()
            files = {f"f{i}": os.urandom(MiB) for i in range(6)}
            for name, data in files.items():
                with open(os.path.join(env.live, name), "wb") as f:
                    f.write(data)
            drive = os.path.join(env.base, "drive")
            snap = snapshot(env, "--cache-size", "256K", "--mount", drive)
            assert snap["cache_file"].startswith(env.cache)
            # a backup reads the first file, then the live side rewrites everything
            with open(os.path.join(drive, "f0"), "rb") as f:
                assert f.read() == files["f0"]
            new = {name: os.urandom(MiB) for name in files}
            for name, data in new.items():
                write_all(os.path.join(env.live, name), data)  # every live write succeeds
            for name, data in new.items():
                with open(os.path.join(env.backing, name), "rb") as f:
                    assert f.read() == data, name
            assert status(env, snap["id"])["state"] == "invalid"
            assert read_errno(os.path.join(drive, "f5")) == errno.EIO
            env.ok("destroy", snap["id"])
            assert env.stop() == 0
            assert os.listdir(env.cache) == []
    finally:
        env.teardown()
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------ mount dirs


def test_busy_nonempty_and_in_use_mount_directories() -> None:
    with served("vspr") as env:
        with open(os.path.join(env.live, "a"), "w") as f:
            f.write("a")
        nonempty = env.mkdir("nonempty")
        with open(os.path.join(nonempty, "x"), "w") as f:
            f.write("x")
        done = env.run("snapshot", "create", env.backing, "--mount", nonempty)
        assert done.returncode == 8, done.stderr  # a mount could not be made (docs/cli.md)
        assert "not empty" in err_line(done)
        assert env.json("list")["snapshots"] == []  # all or nothing
        # busy: something else is mounted there (the live view itself is a mount)
        busy = env.mkdir("busy")
        with tmpfs(busy, "1m"):
            done = env.run("snapshot", "create", env.backing, "--mount", busy)
            assert done.returncode == 8, done.stderr
            assert "already a mount point" in err_line(done)
        # a directory that already holds a drive
        drive = os.path.join(env.base, "drive")
        snap = snapshot(env, "--mount", drive)
        done = env.run("mount", snap["id"], drive)
        assert done.returncode == 8, done.stderr
        print(err_line(done))
        other = env.run("snapshot", "create", env.backing, "--mount", drive)
        assert other.returncode == 8, other.stderr
        print(err_line(other))
        with open(os.path.join(drive, "a")) as f:
            assert f.read() == "a"  # the first drive still works
        assert env.stop() == 0


def _children_and_sockets(pid: int) -> tuple[list[str], int]:
    """The daemon's children ("comm state", e.g. "fusermount3 S") and its socket count."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                comm, rest = f.read().rsplit(b")", 1)
        except OSError:
            continue
        state, ppid = rest.split()[:2]
        if int(ppid) == pid:
            kids.append(f"{comm.split(b'(', 1)[1].decode()} {'Z' if state == b'Z' else 'live'}")
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return sorted(kids), sockets


def test_unmounted_drives_leave_no_helper_process_or_socket() -> None:
    """Each drive's auto_unmount helper (fusermount3) and its socket go with the drive,
    also while other drives (whose helpers were started later) stay mounted."""
    with served("vspr") as env:
        assert env.daemon is not None
        pid = env.daemon.pid
        with open(os.path.join(env.live, "a"), "w") as f:
            f.write("a")
        before = _children_and_sockets(pid)
        helpers = before[0].count("fusermount3 live")
        first, second = os.path.join(env.base, "d1"), os.path.join(env.base, "d2")
        for _ in range(3):
            snap = snapshot(env, "--mount", first)
            env.ok("mount", snap["id"], second)
            assert _children_and_sockets(pid)[0].count("fusermount3 live") == helpers + 2
            env.ok("unmount", first)  # its helper must go although the second one holds on
            kids, _ = _children_and_sockets(pid)
            assert kids.count("fusermount3 live") == helpers + 1 and "fusermount3 Z" not in kids, kids
            env.ok("mount", snap["id"], first)
            env.ok("destroy", snap["id"])
        after = _children_and_sockets(pid)
        assert after == before, (before, after)
        assert env.stop() == 0


# ------------------------------------------------------------ names


NAMES = [b"new\nline", b"bad\xff\xfeutf8", b"n" * 255, b"tab\tand space ", b"\xe2\x82"]


def test_odd_names_in_live_view_and_drive() -> None:
    with served("vspr") as env:
        live = os.fsencode(env.live)
        for i, name in enumerate(NAMES):
            with open(os.path.join(live, name), "wb") as f:
                f.write(b"%d" % i)
            os.mkdir(
                os.path.join(live, name + b".d"[: 255 - len(name)] if len(name) < 254 else b"d" + name[1:])
            )
        too_long = os.path.join(live, b"x" * 256)
        with pytest.raises(OSError) as exc:
            open(too_long, "wb").close()
        assert exc.value.errno == errno.ENAMETOOLONG
        expected = sorted(os.listdir(live))
        assert sorted(set(os.listdir(os.fsencode(env.backing))) - {b".vsp-retained"}) == expected
        drive = os.path.join(env.base, "drive")
        snapshot(env, "--mount", drive)
        for name in NAMES:  # change them all after the snapshot
            os.rename(os.path.join(live, name), os.path.join(live, name[:200] + b".old"))
        d = os.fsencode(drive)
        assert sorted(os.listdir(d)) == expected
        for i, name in enumerate(NAMES):
            with open(os.path.join(d, name), "rb") as f:
                assert f.read() == b"%d" % i, name
        assert env.stop() == 0


# ------------------------------------------------------------ symlinks


def test_symlink_loops_and_outside_targets_stay_symlinks() -> None:
    with served("vspr") as env:
        outside = os.path.join(env.base, "outside-secret")
        with open(outside, "w") as f:
            f.write("outside")
        links = {"loop1": "loop2", "loop2": "loop1", "self": "self", "out": outside, "up": "../../.."}
        for name, target in links.items():
            os.symlink(target, os.path.join(env.live, name))
        drive = os.path.join(env.base, "drive")
        snapshot(env, "--mount", drive)
        for root in (env.live, drive):
            for name, target in links.items():
                p = os.path.join(root, name)
                assert os.path.islink(p), p
                assert os.readlink(p) == target
            assert read_errno(os.path.join(root, "loop1")) == errno.ELOOP
            assert read_errno(os.path.join(root, "self")) == errno.ELOOP
            assert sorted(os.listdir(root)) == sorted(links)
        # the drive lists only what the volume holds: nothing of what "up" or "out" point at
        assert not os.path.lexists(os.path.join(drive, "outside-secret"))
        assert env.stop() == 0


# ------------------------------------------------------------ permissions

NOBODY = 65534


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=drop,
    )


def nobody_reads(path: str) -> str:
    """What ``cat`` running as uid 65534 gets: the content, or "EACCES"."""
    done = as_nobody("cat", path)
    if done.returncode == 0:
        return done.stdout
    assert "Permission denied" in done.stderr, done.stderr
    return "EACCES"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_drive_permissions_equal_the_live_volume() -> None:
    with served("vspr", allow_other=True) as env:
        secret = os.path.join(env.live, "secret")
        public = os.path.join(env.live, "public")
        for p, mode in ((secret, 0o600), (public, 0o644)):
            with open(p, "w") as f:
                f.write(os.path.basename(p))
            os.chmod(p, mode)
        drive = os.path.join(env.base, "drive")
        snapshot(env, "--mount", drive)
        for root in (env.live, drive):
            assert nobody_reads(os.path.join(root, "secret")) == "EACCES"
            assert nobody_reads(os.path.join(root, "public")) == "public"
        assert env.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_without_allow_other_other_users_cannot_enter() -> None:
    with served("vspr") as env:
        for d in (env.base, env.live):
            os.chmod(d, 0o755)
        with open(os.path.join(env.live, "public"), "w") as f:
            f.write("public")
        os.chmod(os.path.join(env.live, "public"), 0o644)
        drive = os.path.join(env.base, "drive")
        snapshot(env, "--mount", drive)
        for root in (env.live, drive):
            assert nobody_reads(os.path.join(root, "public")) == "EACCES", root
        assert env.stop() == 0


# ------------------------------------------------------------ cleanup


def test_cleanup_never_deletes_a_foreign_vsp_file() -> None:
    with served("vspr") as env:
        foreign = {
            os.path.join(env.cache, "VSP_foreign.vsp"): b"not a cache file at all\n" * 100,
            os.path.join(env.cache, "VSP_empty.vsp"): b"",
            os.path.join(env.state, "VSP_user-data.vsp"): os.urandom(10_000),
        }
        for p, data in foreign.items():
            with open(p, "wb") as f:
                f.write(data)
        snap = snapshot(env)
        out = env.json("cleanup")
        assert not set(out["removed"]) & set(foreign), out
        env.ok("destroy", snap["id"])
        assert env.stop() == 0
        # without a daemon too, and in a volume (where it also blocks snapshots: exit 4)
        in_volume = os.path.join(env.backing, "VSP_in-volume.vsp")
        with open(in_volume, "wb") as f:
            f.write(b"user data")
        foreign[in_volume] = b"user data"
        again = env.run("cleanup", env.cache, env.backing, env.state, "--json")
        assert again.returncode in (0, 1), again.stderr
        for p, data in foreign.items():
            with open(p, "rb") as f:
                assert f.read() == data, p


def test_serve_without_fusermount3_is_a_clean_error() -> None:
    """No fusermount3 on PATH: `vspfs serve` exits 8 naming it and what to install, leaves nothing."""
    base = tempfile.mkdtemp(prefix="vspr")
    try:
        dirs = {n: os.path.join(base, n) for n in ("b", "l", "c")}
        for d in dirs.values():
            os.mkdir(d)
        env = {
            **os.environ,
            "PATH": os.path.join(base, "no-such-bin"),
            "VSPFS_SOCKET": os.path.join(base, "s"),
            "VSPFS_STATE_DIR": os.path.join(base, "st"),
        }
        spec = f"{dirs['b']}={dirs['l']}"
        done = subprocess.run(
            [sys.executable, "-m", "vspfs.cli", "serve", spec, "--cache-volume", dirs["c"]],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 8, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("vspfs: error: ")]
        assert len(errors) == 1 and "fusermount3" in errors[0] and "apt-get install fuse3" in errors[0]
        assert "Traceback" not in done.stderr
        assert not mounts_under(base)
        assert os.listdir(dirs["c"]) == [] and os.listdir(dirs["b"]) == []
        assert not os.path.exists(os.path.join(base, "s"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------ kill -9 during COW

COW_WRITER = r"""
import os, random, sys
root, nfiles, size, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
fds = [os.open(f"f{i}", os.O_WRONLY, dir_fd=dfd) for i in range(nfiles)]
slots = [(f, o) for f in range(nfiles) for o in range(0, size, block)]
random.Random(7).shuffle(slots)
try:
    for seq, (f, off) in enumerate(slots):
        data = (b"%08d" % seq) * (block // 8)
        print(f"try {seq} {f} {off}", flush=True)
        if os.pwrite(fds[f], data, off) != block:
            print("short", flush=True)
            break
        print(f"ok {seq} {f} {off}", flush=True)
except OSError as exc:
    print(f"error {exc.errno}", flush=True)
"""


KILL_AFTER = 700


def test_kill_9_during_copy_on_write_overwrites_loses_no_acknowledged_write() -> None:
    """Every overwrite acknowledged before kill -9 is on the backing volume, nothing else changed.

    Each write goes to a block never written before, in a chunk whose old data
    a snapshot still needs, so every one of them makes the daemon preserve
    first. The writer logs a write before ("try") and after ("ok") it returns;
    after the kill, every "ok" block holds its data, at most the one block in
    flight may hold either, and every other byte is the original.
    """
    nfiles, size, block = 4, 4 * MiB, 16384  # 1024 blocks; the kill comes after KILL_AFTER
    with served("vspr") as env:
        original = {i: os.urandom(size) for i in range(nfiles)}
        for i, data in original.items():
            with open(os.path.join(env.live, f"f{i}"), "wb") as f:
                f.write(data)
        snap = snapshot(env, "--mount", os.path.join(env.base, "drive"), "--max-cache-size", "none")
        writer = subprocess.Popen(
            [sys.executable, "-c", COW_WRITER, env.live, str(nfiles), str(size), str(block)],
            stdout=subprocess.PIPE,
            text=True,
        )
        acked: dict[tuple[int, int], int] = {}
        tried: dict[tuple[int, int], int] = {}
        try:
            assert writer.stdout is not None
            for line in writer.stdout:
                parts = line.split()
                if parts[0] in ("try", "ok"):
                    seq, f, off = map(int, parts[1:])
                    (acked if parts[0] == "ok" else tried)[(f, off)] = seq
                if len(acked) == KILL_AFTER:
                    break
            assert len(acked) == KILL_AFTER, "the writer failed before the daemon was killed"
            env.kill()
            for line in writer.stdout:
                parts = line.split()
                if parts[0] in ("try", "ok"):
                    seq, f, off = map(int, parts[1:])
                    (acked if parts[0] == "ok" else tried)[(f, off)] = seq
            writer.wait(timeout=60)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=30)
        in_flight = set(tried) - set(acked)
        assert len(in_flight) <= 1, in_flight
        for i in range(nfiles):
            with open(os.path.join(env.backing, f"f{i}"), "rb") as f:
                got = f.read()
            assert len(got) == size
            for off in range(0, size, block):
                have = got[off : off + block]
                old = original[i][off : off + block]
                if (i, off) in acked:
                    assert have == (b"%08d" % acked[(i, off)]) * (block // 8), (
                        i,
                        off,
                        "acknowledged write lost",
                    )
                elif (i, off) in in_flight:
                    assert have in (old, (b"%08d" % tried[(i, off)]) * (block // 8)), (i, off)
                else:
                    assert have == old, (i, off, "a byte nobody wrote changed")
        # the next start removes what the killed daemon left (cache file, retained area)
        assert env.cache_files()
        wait_until(lambda: not mounts_under(env.base), 30, "auto_unmount after kill -9")
        env.start()
        assert env.json("list")["snapshots"] == []
        assert env.stop() == 0
        assert not env.cache_files() and not env.retained()
        print(f"{len(acked)} acknowledged overwrites, snapshot {snap['id']}, in flight: {in_flight}")
