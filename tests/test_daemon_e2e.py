"""End-to-end tests of `vspfs serve` and the CLI with real FUSE mounts.

Everything goes through the command line, as a user would: the daemon is a
real subprocess (``python -m vspfs.cli serve``) on a private socket and state
directory, the backing directory, live view, cache volume and virtual drives
are temporary directories, and every step is a ``vspfs`` command. Each wait
has a timeout, and teardown always kills the daemon and lazily unmounts
anything left under the temporary directory, so a failing test never leaves
a mount behind for the next one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vspfs.daemon import mount_table

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def mounts_under(root: str) -> list[str]:
    root = os.path.realpath(root)
    return [mp for mp in mount_table() if mp == root or mp.startswith(root + "/")]


class Env:
    """One test's world: directories, environment, the daemon process and CLI calls."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.backing = self.mkdir("backing")
        self.live = self.mkdir("live")
        self.cache = self.mkdir("cache")
        self.state = os.path.join(base, "state")
        self.socket = os.path.join(base, "d.sock")
        self.log = os.path.join(base, "daemon.log")
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "VSPFS_SOCKET": self.socket,
            "VSPFS_STATE_DIR": self.state,
        }
        self.env.pop("VSPFS_DEBUG", None)
        self.daemon: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None

    def mkdir(self, name: str) -> str:
        path = os.path.join(self.base, name)
        os.makedirs(path, exist_ok=True)
        return os.path.realpath(path)

    # -- CLI

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vspfs.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, (
            f"vspfs {' '.join(args)} -> {done.returncode}: {done.stderr}{self.log_text()}"
        )
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    # -- daemon

    def start(self, *volumes: str, extra: tuple[str, ...] = ()) -> None:
        """Start `vspfs serve` and wait until it answers `vspfs list`."""
        specs = list(volumes) or [f"{self.backing}={self.live}"]
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop/kill
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "vspfs.cli", "serve", *specs, "--cache-volume", self.cache, "-v", *extra],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

        def ready() -> bool:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                pytest.fail(
                    f"vspfs serve exited with {self.daemon.returncode} during startup:\n{self.log_text()}"
                )
            try:
                return self.run("list", "--json", timeout=30).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        wait_until(ready, START_TIMEOUT, "the daemon to answer `vspfs list`", interval=0.2)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and return its exit code."""
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        try:
            code = self.daemon.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(timeout=30)
            pytest.fail(f"the daemon did not stop within {STOP_TIMEOUT:g} s of {sig!r}:\n{self.log_text()}")
        self._close_log()
        return code

    def kill(self) -> None:
        """kill -9: no teardown at all, like a crash."""
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait(timeout=30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def log_text(self) -> str:
        try:
            return "\n--- daemon log ---\n" + Path(self.log).read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def teardown(self) -> None:
        """Never leave a daemon or a mount behind, whatever the test did."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.daemon.wait(timeout=30)
        self._close_log()
        for mp in sorted(mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30, check=False)

    # -- leftovers

    def cache_files(self) -> list[str]:
        found = []
        for d in (self.cache, self.state, self.backing):
            with contextlib.suppress(OSError):
                found += [
                    os.path.join(d, n) for n in os.listdir(d) if n.startswith("VSP_") and n.endswith(".vsp")
                ]
        return found

    def retained(self) -> bool:
        return os.path.lexists(os.path.join(self.backing, ".vsp-retained"))


@pytest.fixture
def env() -> Iterator[Env]:
    base = tempfile.mkdtemp(prefix="vspe")  # short: Unix socket paths are limited to 107 bytes
    e = Env(base)
    try:
        yield e
    finally:
        e.teardown()
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


def fill(root: str) -> dict[str, bytes]:
    """Write a small tree through ``root``; return {relative path: content}."""
    rng = os.urandom
    files = {
        "a.txt": b"original a\n",
        "big.bin": rng(1 << 20),
        "dir/sub.txt": b"in a subdirectory\n",
        "dir/deep/x.bin": rng(200_000),
        "doomed.txt": b"will be deleted\n",
        "moved.txt": b"will be renamed\n",
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.link(os.path.join(root, "a.txt"), os.path.join(root, "hardlink.txt"))
    os.symlink("a.txt", os.path.join(root, "sym"))
    files["hardlink.txt"] = files["a.txt"]
    return files


def change(root: str) -> None:
    """Change everything a snapshot must not see, through the live view."""
    with open(os.path.join(root, "a.txt"), "r+b") as f:
        f.write(b"CHANGED")
    with open(os.path.join(root, "big.bin"), "r+b") as f:
        f.seek(70_000)
        f.write(b"\xff" * 300_000)
    os.truncate(os.path.join(root, "dir/deep/x.bin"), 10)
    os.unlink(os.path.join(root, "doomed.txt"))
    os.rename(os.path.join(root, "moved.txt"), os.path.join(root, "dir/moved-here.txt"))
    with open(os.path.join(root, "new.txt"), "wb") as f:
        f.write(b"created after the snapshot\n")
    os.chmod(os.path.join(root, "dir/sub.txt"), 0o600)


def assert_tree(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        got = Path(root, rel).read_bytes()
        assert got == data, f"{rel} differs in {root}"
    assert not os.path.exists(os.path.join(root, "new.txt"))
    assert not os.path.exists(os.path.join(root, "dir/moved-here.txt"))
    assert os.readlink(os.path.join(root, "sym")) == "a.txt"
    a = os.stat(os.path.join(root, "a.txt"))
    h = os.stat(os.path.join(root, "hardlink.txt"))
    assert a.st_ino == h.st_ino and a.st_nlink == 2


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mount_table()


# ---------------------------------------------------------------- scenario


def test_full_scenario_through_the_cli(env: Env) -> None:
    env.start()
    assert is_mounted(env.live)
    originals = fill(env.live)
    assert Path(env.backing, "a.txt").read_bytes() == originals["a.txt"]  # writes reach the backing dir

    snapdir = os.path.join(env.base, "snap")
    created = env.json("snapshot", "create", env.live, "--mount", snapdir)
    (snap,) = created["snapshots"]
    sid = snap["id"]
    assert snap["mount"] == os.path.realpath(snapdir)
    assert snap["state"] == "valid"
    assert snap["volume"] == {**snap["volume"], "backing": env.backing, "mountpoint": env.live}
    assert os.path.dirname(snap["cache_file"]) == env.cache
    assert os.path.exists(snap["cache_file"])
    assert is_mounted(snapdir)

    change(env.live)
    assert Path(env.live, "a.txt").read_bytes().startswith(b"CHANGED")
    assert Path(env.backing, "new.txt").exists()

    assert_tree(snapdir, originals)
    assert stat.S_IMODE(os.stat(os.path.join(snapdir, "dir/sub.txt")).st_mode) != 0o600  # chmod came later
    with pytest.raises(OSError) as exc:
        os.open(os.path.join(snapdir, "a.txt"), os.O_WRONLY)
    assert exc.value.errno == errno.EROFS

    status = env.json("status", sid)
    for key in (
        "id",
        "state",
        "invalid_reason",
        "volume",
        "created",
        "cache_file",
        "cache_bytes",
        "cache_max",
        "pinned_bytes",
        "chunks_preserved",
        "mounts",
    ):
        assert key in status, key
    assert status["state"] == "valid" and status["invalid_reason"] is None
    assert status["chunks_preserved"] > 0
    assert status["cache_bytes"] > 0
    assert status["mounts"] == [os.path.realpath(snapdir)]

    listing = env.json("list")
    assert [s["id"] for s in listing["snapshots"]] == [sid]
    assert listing["volumes"][0]["backing"] == env.backing

    human = env.ok("status", sid)
    assert "valid" in human and snap["cache_file"] in human

    unmounted = env.json("unmount", snapdir)
    assert unmounted["snapshot"] == sid
    wait_until(lambda: not is_mounted(snapdir), 30, "the virtual drive to go away")

    # mount again elsewhere: the snapshot outlives its drives
    again = os.path.join(env.base, "again")
    env.json("mount", sid, again)
    assert_tree(again, originals)

    destroyed = env.json("destroy", sid)
    assert destroyed == {"destroyed": [sid]}
    assert not os.path.exists(snap["cache_file"])
    wait_until(lambda: not is_mounted(again), 30, "destroy to unmount the drive")
    assert env.json("list")["snapshots"] == []

    # the live data is intact after all that
    assert Path(env.live, "new.txt").read_bytes() == b"created after the snapshot\n"

    assert env.stop() == 0, env.log_text()
    assert mounts_under(env.base) == []
    assert env.cache_files() == []
    assert not env.retained()
    assert Path(env.backing, "dir/moved-here.txt").read_bytes() == originals["moved.txt"]
    assert env.run("list").returncode == 3


def test_sigterm_with_active_snapshots_leaves_nothing(env: Env) -> None:
    env.start()
    fill(env.live)
    env.json("snapshot", "create", env.live, "--mount", os.path.join(env.base, "s1"))
    env.json("snapshot", "create", env.live)  # a second snapshot of the same volume, unmounted
    change(env.live)  # retained files and cache contents for both
    assert len(env.cache_files()) == 2
    assert env.stop(signal.SIGTERM) == 0, env.log_text()
    assert mounts_under(env.base) == []
    assert env.cache_files() == []
    assert not env.retained()


def test_sigint_is_the_same_as_sigterm(env: Env) -> None:
    env.start()
    fill(env.live)
    env.json("snapshot", "create", env.live, "--mount", os.path.join(env.base, "s1"))
    change(env.live)
    assert env.stop(signal.SIGINT) == 0, env.log_text()
    assert mounts_under(env.base) == []
    assert env.cache_files() == []
    assert not env.retained()


def test_served_over_the_backing_directory(env: Env) -> None:
    """BACKING alone: applications keep their paths and still go through the live view."""
    before = fill(env.backing)  # written before serving: plain files
    env.start(env.backing)
    assert is_mounted(env.backing)
    listing = env.json("list")
    assert listing["volumes"][0]["over"] is True
    snapdir = os.path.join(env.base, "snap")
    env.json("snapshot", "create", env.backing, "--mount", snapdir)
    change(env.backing)  # through the live view mounted over it
    assert_tree(snapdir, before)
    assert env.stop() == 0, env.log_text()
    assert mounts_under(env.base) == []
    assert Path(env.backing, "new.txt").exists()  # the changes are in the real directory
    assert Path(env.backing, "a.txt").read_bytes().startswith(b"CHANGED")
    assert env.cache_files() == []
    assert not env.retained()


@pytest.mark.parametrize("form", ["--over", "--at"])
def test_serve_over_and_at_options(env: Env, form: str) -> None:
    """DESIGN.md's `serve BACKING --over` / `--at MOUNTPOINT` mean BACKING / BACKING=MOUNTPOINT."""
    env.start(env.backing, extra=("--over",) if form == "--over" else ("--at", env.live))
    where = env.backing if form == "--over" else env.live
    [vol] = env.json("list")["volumes"]
    assert vol["over"] is (form == "--over") and vol["mountpoint"] == where
    Path(where, "x.txt").write_text("through the live view")
    assert env.stop() == 0, env.log_text()
    assert Path(env.backing, "x.txt").read_text() == "through the live view"
    assert mounts_under(env.base) == []


def test_snapshot_set_of_two_volumes(env: Env) -> None:
    b2 = env.mkdir("backing2")
    l2 = env.mkdir("live2")
    env.start(f"{env.backing}={env.live}", f"{b2}={l2}")
    Path(env.live, "gen").write_text("1")
    Path(l2, "gen").write_text("1")
    drives = env.mkdir("drives")
    created = env.json("snapshot", "create", env.live, b2, "--mount", drives)
    snaps = created["snapshots"]
    assert len(snaps) == 2
    assert sorted(os.path.basename(s["mount"]) for s in snaps) == sorted(["backing", "backing2"])
    assert len({s["created"] for s in snaps}) == 1
    Path(env.live, "gen").write_text("2")
    Path(l2, "gen").write_text("2")
    for s in snaps:
        assert Path(s["mount"], "gen").read_text() == "1"
    env.json("destroy", *[s["id"] for s in snaps])
    assert env.stop() == 0, env.log_text()
    assert mounts_under(env.base) == []
    assert env.cache_files() == []


def test_errors_through_the_cli(env: Env) -> None:
    env.start()
    done = env.run("snapshot", "create", os.path.join(env.base, "not-served"))
    assert (
        done.returncode == 2 and done.stderr.startswith("vspfs: error: ") and "Traceback" not in done.stderr
    )
    done = env.run("unmount", env.live)
    assert done.returncode == 2 and "live view" in done.stderr
    done = env.run("destroy", "no-such-id")
    assert done.returncode == 2
    # a second daemon on the same socket is refused before it mounts anything
    other = env.mkdir("other")
    second = subprocess.run(
        [sys.executable, "-m", "vspfs.cli", "serve", other],
        capture_output=True,
        text=True,
        env=env.env,
        timeout=60,
        check=False,
    )
    assert second.returncode != 0
    assert "another vspfs daemon" in second.stderr
    assert not is_mounted(other)
    assert env.stop() == 0


# ------------------------------------------------------------------ kill -9

WRITER = r"""
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # stays on the live view even after it dies
def payload(i):
    return (f"file {i} ".encode() * 500)[: 1000 + i * 37]
try:
    for i in range(count):
        fd = os.open(f"w{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dfd)
        try:
            os.write(fd, payload(i))
        finally:
            os.close(fd)
        if i % 3 == 0 and i > 0:
            os.unlink(f"w{i - 1}", dir_fd=dfd)
            print(f"deleted {i - 1}", flush=True)
        print(f"wrote {i}", flush=True)
except OSError as exc:
    print(f"error {exc.errno}", flush=True)
"""


def open_errno(path: str) -> str:
    """What opening ``path`` gives: fusermount3's auto_unmount only acts on ENOTCONN."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "opens"


def payload(i: int) -> bytes:
    return (f"file {i} ".encode() * 500)[: 1000 + i * 37]


@pytest.mark.parametrize("recovery", ["cleanup", "serve"])
def test_kill_9_during_writes(env: Env, recovery: str) -> None:
    env.start()
    fill(env.live)
    env.json("snapshot", "create", env.live, "--mount", os.path.join(env.base, "snap"))
    change(env.live)  # the snapshot now has a cache file with data and a retained area
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, env.live, "100000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    wrote: set[int] = set()
    deleted: set[int] = set()
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            kind, _, value = line.strip().partition(" ")
            if kind == "wrote":
                wrote.add(int(value))
            elif kind == "deleted":
                deleted.add(int(value))
            if len(wrote) == 200:
                break
        assert len(wrote) == 200, "the writer failed before the daemon was killed"
        env.kill()
        for line in writer.stdout:  # what it managed before noticing
            kind, _, value = line.strip().partition(" ")
            if kind == "wrote":
                wrote.add(int(value))
            elif kind == "deleted":
                deleted.add(int(value))
        writer.wait(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)

    # every write the writer got success for is in the backing directory
    for i in sorted(wrote - deleted):
        assert Path(env.backing, f"w{i}").read_bytes() == payload(i), f"w{i}"
    for i in deleted:
        assert not Path(env.backing, f"w{i}").exists()

    # auto_unmount: no mount outlives the daemon (the kernel may need a moment). If one
    # does, still check that recovery removes it, then report it with what we know.
    deadline = time.monotonic() + 30
    while mounts_under(env.base) and time.monotonic() < deadline:
        time.sleep(0.1)
    stuck = {mp: open_errno(mp) for mp in mounts_under(env.base)}

    assert env.cache_files(), "a killed daemon should have left its cache file"
    if recovery == "cleanup":
        result = env.json("cleanup")
        assert result["daemon"] is False
        assert any(p.endswith(".vsp") for p in result["removed"])
        assert sorted(result["unmounted"]) == sorted(stuck)
    else:
        env.start()
        env.ok("list")
        assert env.stop() == 0, env.log_text()
    assert env.cache_files() == []
    assert not env.retained()
    assert mounts_under(env.base) == []
    assert not stuck, (
        f"auto_unmount left these mounts 30 s after kill -9 (errno of open(); recovery removed them): {stuck}"
    )


def _fusermount_helpers(under: str) -> list[int]:
    """The auto_unmount helpers (fusermount3 processes) of mounts under ``under``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            args = Path("/proc", name, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]) == b"fusermount3" and any(under.encode() in a for a in args):
            pids.append(int(name))
    return pids


def test_janitor_removes_mounts_when_auto_unmount_cannot(env: Env) -> None:
    """kill -9 of the daemon *and* its fusermount3 helpers: the janitor detaches the dead mounts."""
    env.start()
    fill(env.live)
    env.json("snapshot", "create", env.live, "--mount", os.path.join(env.base, "snap"))
    helpers = _fusermount_helpers(env.base)
    assert helpers, "expected fusermount3 auto_unmount helpers"
    for pid in helpers:
        os.kill(pid, signal.SIGKILL)
    env.kill()
    wait_until(lambda: mounts_under(env.base) == [], 30, "the janitor to detach the dead mounts")
    assert "vspfs janitor: removed the dead mount" in Path(env.log).read_text()
    assert Path(env.backing, "a.txt").read_bytes() == b"original a\n"
    result = env.json("cleanup")
    assert result["unmounted"] == []
    assert env.cache_files() == []
    assert not env.retained()


def test_live_view_unmounted_behind_our_back_invalidates_its_snapshots(env: Env) -> None:
    """Writes that bypass vspfs cannot be preserved: the snapshot must fail loudly, not lie."""
    env.start()
    fill(env.live)
    snapdir = os.path.join(env.base, "snap")
    (snap,) = env.json("snapshot", "create", env.live, "--mount", snapdir)["snapshots"]
    subprocess.run(["fusermount3", "-u", "-z", env.live], check=True, capture_output=True, timeout=30)

    def invalid() -> dict[str, Any] | None:
        status = env.json("status", snap["id"])
        return status if status["state"] == "invalid" else None

    status = wait_until(invalid, 30, "the daemon to notice the lost live view")
    assert env.live in status["invalid_reason"]
    with pytest.raises(OSError) as exc:
        Path(snapdir, "a.txt").read_bytes()
    assert exc.value.errno == errno.EIO
    assert env.stop() == 0, env.log_text()
    assert mounts_under(env.base) == []
    assert env.cache_files() == []
    assert not env.retained()
