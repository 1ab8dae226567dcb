"""The daemon, CLI, control, jobs and backup paths use nothing Windows' Python lacks.

Python on Windows has no ``os.geteuid``, no SIGHUP/SIGKILL/SIGUSR1, no
``os.O_NOFOLLOW``/``O_CLOEXEC``/``O_NONBLOCK``, no ``dir_fd``, no
``os.pread``, no /proc (docs/windows.md, "What the core still needs",
item 7). These tests run the Windows branches on Linux with
``winplatform.running_on_windows`` forced, and with ``os`` and ``signal``
replaced, in the modules under test, by views that hold only what Windows'
Python has: a POSIX-only name used on a Windows path then fails here with
AttributeError (or NotImplementedError for ``dir_fd``), as it would crash
there, and reading /proc fails the test. The engine (Volume, Snapshot,
provider) runs over hostfs's by-path calls with Windows' os in its
modules (the last test). The control socket keeps the real modules (the
tests talk to the daemon through it; the pipe's branch is
tests/test_winpipe.py's).
"""

from __future__ import annotations

import builtins
import enum
import ntpath
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_mounts import FakeBackend
from vspfs import backup, cli, config, control, jobs, procs
from vspfs import daemon as daemon_mod
from vspfs import winplatform as wp
from vspfs.daemon import Daemon, VolumeSpec
from vspfs.errors import UsageError

#: what Linux's os has and Windows' does not, among what vspfs could reach for
POSIX_ONLY_OS = frozenset(
    {
        "geteuid", "getuid", "getegid", "getgid", "getgroups", "getpgid", "getpgrp", "setpgrp",
        "setsid", "getsid", "killpg", "fork", "forkpty", "wait3", "wait4", "WNOHANG", "statvfs",
        "fstatvfs", "pidfd_open", "pread", "pwrite", "preadv", "pwritev", "readv", "writev", "sync",
        "fdatasync", "fchown", "chown", "lchown", "getxattr", "setxattr", "listxattr", "removexattr",
        "mkfifo", "mknod", "uname", "getloadavg", "sendfile", "posix_fallocate", "posix_fadvise",
        "sched_getaffinity", "O_NOFOLLOW", "O_CLOEXEC", "O_DIRECTORY", "O_NONBLOCK", "O_PATH",
        "O_NOATIME", "O_NOCTTY", "O_SYNC", "O_DSYNC",
    }
)  # fmt: skip
#: the signals Windows' Python has (signal module documentation), with Windows' numbers
WINDOWS_SIGNALS = {
    "SIGINT": 2,
    "SIGILL": 4,
    "SIGFPE": 8,
    "SIGSEGV": 11,
    "SIGTERM": 15,
    "SIGBREAK": 21,
    "SIGABRT": 22,
}
#: os functions that take dir_fd (unsupported on Windows: NotImplementedError there)
_DIR_FD_FUNCTIONS = ("open", "stat", "lstat", "mkdir", "rmdir", "unlink", "rename", "replace", "readlink")


def _no_proc(path: object) -> None:
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
    if text == "/proc" or text.startswith("/proc/"):
        raise AssertionError(f"{text} read on a Windows path: Windows has no /proc")


class WindowsOs(types.ModuleType):
    """``os`` as Windows' Python has it, over the real one (paths stay POSIX)."""

    O_BINARY = 0x8000

    def __init__(self) -> None:
        super().__init__("os")
        self.supports_dir_fd: set[Any] = set()
        self.killed: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        if name in POSIX_ONLY_OS:
            raise AttributeError(f"module 'os' has no attribute {name!r} (not on Windows)")
        real = getattr(os, name)
        if name in _DIR_FD_FUNCTIONS or name in ("listdir", "scandir"):

            def call(*args: Any, **kwargs: Any) -> Any:
                if kwargs.get("dir_fd") is not None:
                    raise NotImplementedError("dir_fd unavailable on this platform")
                if name in ("listdir", "scandir") and args and isinstance(args[0], int):
                    raise TypeError(f"{name}: path should be string, bytes or os.PathLike, not int")
                if args:
                    _no_proc(args[0])
                return real(*args, **kwargs)

            return call
        return real

    def kill(self, pid: int, sig: int) -> None:
        """Recorded, never sent (on Windows this is TerminateProcess, or a console event)."""
        self.killed.append((pid, sig))


class WindowsSignal(types.ModuleType):
    """``signal`` as Windows' Python has it: only its signals; handlers are recorded."""

    def __init__(self) -> None:
        super().__init__("signal")
        for name, number in WINDOWS_SIGNALS.items():
            setattr(self, name, number)
        self.Signals = enum.IntEnum("Signals", WINDOWS_SIGNALS)  # type: ignore[misc]
        self.CTRL_C_EVENT, self.CTRL_BREAK_EVENT = 0, 1
        self.SIG_DFL, self.SIG_IGN = signal.SIG_DFL, signal.SIG_IGN
        self.default_int_handler = signal.default_int_handler
        self.handlers: dict[int, Any] = {}
        self.installed: list[int] = []

    def signal(self, signum: int, handler: Any) -> Any:
        if signum not in WINDOWS_SIGNALS.values():
            raise ValueError("invalid signal value")  # what Windows' signal.signal says
        previous = self.handlers.get(signum, self.SIG_DFL)
        self.handlers[signum] = handler
        self.installed.append(signum)
        return previous

    def getsignal(self, signum: int) -> Any:
        if signum not in WINDOWS_SIGNALS.values():
            raise ValueError("invalid signal value")
        return self.handlers.get(signum, self.SIG_DFL)


def _guarded_open(real: Callable[..., Any]) -> Callable[..., Any]:
    def opener(file: Any, *args: Any, **kwargs: Any) -> Any:
        _no_proc(file)
        return real(file, *args, **kwargs)

    return opener


@pytest.fixture
def win(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Windows branches taken, and Windows' os and signal in the modules under test."""
    fake_os, fake_signal = WindowsOs(), WindowsSignal()
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    monkeypatch.setattr(wp, "taken_letters_windows", lambda: {"C:", "D:"})
    for mod in (daemon_mod, jobs, backup, procs, config, cli):
        if hasattr(mod, "os"):
            monkeypatch.setattr(mod, "os", fake_os)
        if hasattr(mod, "signal"):
            monkeypatch.setattr(mod, "signal", fake_signal)
        monkeypatch.setattr(mod, "open", _guarded_open(builtins.open), raising=False)
    return types.SimpleNamespace(os=fake_os, signal=fake_signal)


@pytest.fixture
def short_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="vsx")
    monkeypatch.setenv("VSPFS_SOCKET", os.path.join(d, "s.sock"))
    monkeypatch.setenv("VSPFS_STATE_DIR", os.path.join(d, "state"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------- daemon


def test_serve_on_windows_stops_on_ctrl_break(win: types.SimpleNamespace, short_dir: str) -> None:
    """The whole `vspfs serve` run: handlers, validation, leftovers, open files, teardown."""
    pytest.importorskip("vspfs.provider")
    backing, cache = os.path.join(short_dir, "data"), os.path.join(short_dir, "cache")
    os.mkdir(backing)
    os.mkdir(cache)
    sig = win.signal
    result: list[int] = []

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if control.request("ping", timeout=2)["ready"]:  # type: ignore[index]
                    break
            except Exception:
                pass
            time.sleep(0.05)
        # a console's Ctrl-Break (or, if no handler took it, a Ctrl-C: the test must end)
        signum = sig.SIGBREAK if sig.SIGBREAK in sig.handlers else sig.SIGINT
        sig.handlers[signum](signum, None)

    stopper = threading.Thread(target=stop_when_ready)
    stopper.start()
    try:
        result.append(
            daemon_mod.serve(
                [VolumeSpec(backing, "L:")],
                cache_volumes=[cache],
                state_dir=os.environ["VSPFS_STATE_DIR"],
                backend=FakeBackend(),  # type: ignore[arg-type]
            )
        )
    finally:
        stopper.join(30)
    assert result == [0]
    assert sorted(set(sig.installed)) == [sig.SIGINT, sig.SIGTERM, sig.SIGBREAK]
    assert all(h == sig.SIG_DFL for h in sig.handlers.values())  # put back


def test_no_janitor_on_windows(
    win: types.SimpleNamespace, short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("vspfs.provider")
    spawned: list[bool] = []
    monkeypatch.setattr(Daemon, "_spawn_janitor", lambda self: spawned.append(True))
    d = Daemon([VolumeSpec(short_dir, "L:")], backend=FakeBackend())  # type: ignore[arg-type]
    d._want_janitor = True  # as with the real backend
    try:
        d.start()
    finally:
        assert d.shutdown()
    assert spawned == []
    record = os.path.join(short_dir, "record.json")
    Path(record).write_text('{"pid": 1}')
    assert daemon_mod.janitor(1, record) == 0  # at once: no pidfd, no /proc, nothing to detach


def test_platform_readers_answer_nothing_on_windows(win: types.SimpleNamespace, short_dir: str) -> None:
    assert daemon_mod.mount_table() == {}
    assert daemon_mod.processes_holding([short_dir]) == {}
    assert daemon_mod.is_dead_mount(short_dir) is False
    assert daemon_mod.detach_dead_mount(short_dir) is False
    assert procs.parents() == {} and procs.descendants(os.getpid()) == [] and procs.argv(os.getpid()) == []


def test_default_places_on_windows(win: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "os", win.os)
    for name in ("VSPFS_STATE_DIR", "VSPFS_SOCKET", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALAPPDATA", "C:\\Users\\ann\\AppData\\Local")
    monkeypatch.setenv("APPDATA", "C:\\Users\\ann\\AppData\\Roaming")
    monkeypatch.setenv("ProgramData", "C:\\ProgramData")
    assert daemon_mod.default_state_dir() == "C:\\Users\\ann\\AppData\\Local\\vspfs\\state"
    assert wp.is_pipe_name(control.default_socket_path())
    assert config.default_paths() == [
        ntpath.join("C:\\ProgramData", "vspfs", "config.toml"),  # not /etc: C:\etc is anyone's to make
        ntpath.join("C:\\Users\\ann\\AppData\\Roaming", "vspfs", "config.toml"),
    ]


def test_a_socket_path_is_a_usage_error_without_unix_sockets(
    monkeypatch: pytest.MonkeyPatch, short_dir: str
) -> None:
    path = os.path.join(short_dir, "s.sock")
    monkeypatch.setattr(control, "os", WindowsOs())  # no geteuid: no uid to check a socket with
    with pytest.raises(UsageError, match=r"no Unix sockets here.*pipe name"):
        control.ControlServer(path, lambda op, args: None)
    with pytest.raises(UsageError, match="no Unix sockets here"):
        control.request("ping", socket_path=path)
    monkeypatch.undo()
    monkeypatch.delattr(socket, "AF_UNIX")
    with pytest.raises(UsageError, match="no Unix sockets here"):
        control.request("ping", socket_path=path)


# --------------------------------------------------------------------- jobs


def _database_tree(root: str) -> list[str]:
    for rel, data in {
        "pg/PG_VERSION": b"16\n",
        "pg/postmaster.pid": b"1\n",
        "pg/base/1/1234": b"",
        "app.db": b"SQLite format 3\x00" + b"\x00" * 100,
    }.items():
        Path(root, rel).parent.mkdir(parents=True, exist_ok=True)
        Path(root, rel).write_bytes(data)
    return ["pg/base/1/1234", "app.db"]


def test_live_databases_are_found_through_the_by_path_calls_on_windows(
    win: types.SimpleNamespace, tmp_path: Path
) -> None:
    """On Windows the volume's directory handle is used through hostfs's
    by-path binding (no dir_fd): bound here over Linux's primitives."""
    from vspfs import hostfs

    opened = _database_tree(str(tmp_path))
    previous = hostfs.use(hostfs.linux_path_calls())
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        vol = types.SimpleNamespace(backing="/nonexistent", root_fd=fd)
        found = [(h.kind, h.path) for h in jobs._databases(vol, opened)]  # type: ignore[arg-type]
    finally:
        os.close(fd)
        hostfs.use(previous)
    assert found == [("SQLite", "app.db"), ("PostgreSQL", "pg")]


def test_live_databases_are_found_through_the_root_fd_on_linux(tmp_path: Path) -> None:
    opened = _database_tree(str(tmp_path))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        vol = types.SimpleNamespace(backing="/nonexistent", root_fd=fd)
        found = [(h.kind, h.path) for h in jobs._databases(vol, opened)]  # type: ignore[arg-type]
    finally:
        os.close(fd)
    assert found == [("SQLite", "app.db"), ("PostgreSQL", "pg")]


# ------------------------------------------------------------------- backup


class FakeProc:
    pid = 4242

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.killed = 0

    def poll(self) -> None:
        return None

    def send_signal(self, sig: int) -> None:
        self.sent.append(sig)

    def kill(self) -> None:
        self.killed += 1


class FakeSubprocess(types.ModuleType):
    """backup's subprocess: ``run`` (taskkill) and ``Popen`` recorded, nothing started."""

    def __init__(self) -> None:
        super().__init__("subprocess")
        self.ran: list[list[str]] = []
        self.status = 0  # what taskkill answers
        self.started: list[tuple[list[str], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def run(self, argv: list[str], **kw: Any) -> Any:
        self.ran.append(argv)
        return types.SimpleNamespace(returncode=self.status)

    def Popen(self, argv: list[str], **kw: Any) -> Any:  # subprocess.Popen, by its name
        self.started.append((argv, kw))
        return types.SimpleNamespace(pid=4242, wait=lambda timeout=None: 0)


@pytest.fixture
def sub(monkeypatch: pytest.MonkeyPatch) -> FakeSubprocess:
    fake = FakeSubprocess()
    monkeypatch.setattr(backup, "subprocess", fake)
    return fake


TASKKILL = ["taskkill", "/F", "/T", "/PID", "4242"]


def test_stopping_the_command_on_windows(win: types.SimpleNamespace, sub: FakeSubprocess) -> None:
    proc = FakeProc()
    backup.stop_command(proc, backup.INTERRUPT)  # type: ignore[arg-type]
    backup.stop_command(proc, backup.TERMINATE)  # type: ignore[arg-type]
    assert proc.sent == [win.signal.CTRL_BREAK_EVENT] * 2  # to its process group
    backup.stop_command(proc, backup.KILL)  # type: ignore[arg-type]
    assert sub.ran == [TASKKILL] and proc.killed == 0
    sub.status = 128  # taskkill failed: TerminateProcess on the command at least
    backup.stop_command(proc, backup.KILL)  # type: ignore[arg-type]
    assert proc.killed == 1
    assert win.os.killed == []  # no POSIX tree walk, no os.kill


def test_stopping_the_command_on_linux(monkeypatch: pytest.MonkeyPatch, sub: FakeSubprocess) -> None:
    proc = FakeProc()
    sent: list[int] = []
    monkeypatch.setattr(backup.procs, "descendants", lambda pid: [4243])
    monkeypatch.setattr(backup.os, "kill", lambda pid, sig: sent.append(sig))
    for step in backup.STOP_STEPS:
        backup.stop_command(proc, step)  # type: ignore[arg-type]
    assert proc.sent == sent == [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] and sub.ran == []


@pytest.mark.parametrize("windows", [True, False])
def test_the_command_leads_its_own_process_group_on_windows(
    monkeypatch: pytest.MonkeyPatch, sub: FakeSubprocess, windows: bool
) -> None:
    monkeypatch.setattr(wp, "running_on_windows", lambda: windows)
    options = backup.Options(0, 0, "continue", "continue", None, None, "invalidate", [], [])
    run = backup.BackupRun(
        ["L:"], ["tar", "-C", "{drive}"], options, socket_path=None, mount_dir=None, progress=False
    )
    holder = types.SimpleNamespace(is_alive=lambda: True)
    result, lost = run._run_command(holder, {"volumes": [{"volume": "L:", "drive": "V:"}]})  # type: ignore[arg-type]
    assert (result.returncode, lost) == (0, None)
    ((argv, kw),) = sub.started
    assert argv == ["tar", "-C", "V:"]
    assert kw["creationflags"] == (0x200 if windows else 0)  # CREATE_NEW_PROCESS_GROUP: for Ctrl-Break


def test_backup_run_on_windows_handles_ctrl_c_and_ctrl_break(
    win: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, sub: FakeSubprocess
) -> None:
    sig = win.signal
    options = backup.Options(0, 0, "continue", "continue", None, None, "invalidate", [], [])
    run = backup.BackupRun(["L:"], ["tar"], options, socket_path=None, mount_dir=None, progress=False)
    proc = FakeProc()
    handlers: list[set[int]] = []

    def fake_run() -> dict[str, Any]:
        handlers.append(set(sig.handlers))
        run.proc = proc  # type: ignore[assignment]
        sig.handlers[sig.SIGBREAK](sig.SIGBREAK, None)  # a console's Ctrl-Break: not passed on
        assert proc.sent == []
        run._escalate([(0.0, step) for step in backup.STOP_STEPS], 1.0)
        return {}

    monkeypatch.setattr(run, "_run", fake_run)
    run.run()
    assert handlers == [{sig.SIGINT, sig.SIGTERM, sig.SIGBREAK}]
    assert all(h == sig.SIG_DFL for h in sig.handlers.values())  # put back
    assert proc.sent == [sig.CTRL_BREAK_EVENT] * 2 and sub.ran == [TASKKILL]
    assert run.signal == sig.SIGBREAK
    code, verdict = backup.outcome(None, None, interrupted=run.signal)
    assert code == 128 + 21 and "SIGBREAK" in verdict
    assert backup._volume_arg("l:") == "L:"  # a live drive, not the current directory of L:


# ------------------------------------------------------------------- engine


@pytest.fixture
def win_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The engine as it runs on Windows: hostfs's by-path calls (with Linux's
    answers to their three primitives, made with the real os), and Windows'
    os in the engine modules and in the by-path code itself."""
    from vspfs import cow, fdcache, hostfs, provider, retained, snapshot, volume

    real = os

    def open_file(path: str, flags: int, mode: int) -> int:
        return real.open(path, flags | real.O_CLOEXEC, mode)

    def open_directory(path: str) -> int:
        return real.open(path, real.O_RDONLY | real.O_DIRECTORY | real.O_NOFOLLOW | real.O_CLOEXEC)

    def rename(old: str, new: str, replace: bool) -> None:
        if not replace and real.path.lexists(new):
            raise FileExistsError(17, "File exists", old)
        real.rename(old, new)

    calls = hostfs.PathCalls(
        access_path=lambda fd: real.readlink(f"/proc/self/fd/{fd}"),
        open_file=open_file,
        open_directory=open_directory,
        rename=rename,
        sep="/",
    )
    previous = hostfs.use(calls)
    fake_os = WindowsOs()
    for mod in (volume, snapshot, retained, cow, provider, fdcache, hostfs):
        if hasattr(mod, "os"):
            monkeypatch.setattr(mod, "os", fake_os)
    monkeypatch.setattr(volume, "_IS_ROOT", False)  # Windows has no uid 0
    try:
        yield
    finally:
        hostfs.use(previous)


def test_the_engine_runs_on_windows_os(win_engine: None, tmp_path: Path) -> None:
    """A snapshot's whole life through the engine with only what Windows'
    Python has: writes, truncation, unlink, rename over, moves of files and
    directories, rmdir, reads of the past, the list of changes, destroy."""
    from vspfs.provider import Provider

    backing = tmp_path / "vol"
    (backing / "d" / "sub").mkdir(parents=True)
    (backing / "d" / "f").write_bytes(b"f" * 10000)
    (backing / "g").write_bytes(b"g" * 5000)
    (backing / "h").write_bytes(b"h")
    (tmp_path / "state").mkdir()
    prov = Provider(str(tmp_path / "state"))
    try:
        vol = prov.add_volume(str(backing), chunk_size=4096)
        [snap] = prov.create_snapshot_set([vol])
        fh = vol.open("/d/f", os.O_RDWR)
        vol.write(fh, b"NEW", 4096)
        vol.truncate("/d/f", 5000, fh=fh)
        vol.release(fh)
        vol.rename("/g", "/h")  # over another file
        vol.rename("/d/sub", "/moved")  # a directory moves
        vol.unlink("/d/f")
        vol.rmdir("/moved")
        vol.mkdir("/new", 0o755)
        assert sorted(n for n, _i, _t in snap.readdir("/")) == ["d", "g", "h"]
        assert sorted(n for n, _i, _t in snap.readdir("/d")) == ["f", "sub"]
        for path, data in (("/d/f", b"f" * 10000), ("/g", b"g" * 5000), ("/h", b"h")):
            sfh = snap.open(path)
            try:
                assert snap.read(sfh, 20000, 0) == data
            finally:
                snap.release(sfh)
        assert snap.changes() == {
            "created": ["new"],
            "modified": [],
            "deleted": ["d/f", "d/sub"],
            "renamed": [("g", "h")],
        }
        prov.destroy(snap)
        assert sorted(vol.readdir("/")) == ["d", "h", "new"]
    finally:
        prov.close()
