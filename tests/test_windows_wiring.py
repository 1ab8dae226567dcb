"""Drive letters in the daemon and the CLI, both platforms' branches, on Linux.

On Linux a drive letter is a one-line usage error (exit 2) that never
creates a directory named "V:". The Windows branch of the same logic runs
here too: ``winplatform.running_on_windows`` is replaced, the letters in use
are injected (``winplatform.taken_letters_windows``), and a fake mount
backend records what the daemon would mount, so the daemon's choice of
letters, its refusals and its bookkeeping are tested without winfspy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_dll import FakeDll
from tests.fake_mounts import FakeBackend, FakeHandle
from vspfs import daemon as daemon_mod
from vspfs import winplatform as wp
from vspfs.cli import main
from vspfs.daemon import Daemon, VolumeSpec, default_backend
from vspfs.errors import MountError, UsageError


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else int(code)), out, err


@pytest.fixture
def short_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="vsw")
    monkeypatch.chdir(d)  # a "V:" directory would be made here
    monkeypatch.setenv("VSPFS_SOCKET", os.path.join(d, "none.sock"))
    monkeypatch.setenv("VSPFS_STATE_DIR", os.path.join(d, "state"))
    monkeypatch.delenv("VSPFS_DEBUG", raising=False)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Take the Windows branches; the returned set is the letters "in use" (mutable)."""
    taken = {"C:", "D:"}
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    monkeypatch.setattr(wp, "taken_letters_windows", lambda: set(taken))
    return taken


# --------------------------------------------------------------- Linux branch


@pytest.mark.parametrize(
    "args",
    [
        ["mount", "SNAP", "V:"],
        ["mount", "SNAP", "v:\\"],
        ["mount", "SNAP", "V:/"],
        ["unmount", "V:"],
        ["snapshot", "create", "/srv/data", "--mount", "W:"],
        ["serve", "/srv/data=L:"],
    ],
    ids=lambda a: " ".join(a),
)
def test_drive_letter_on_linux_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], short_dir: str, args: list[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vspfs: error: ")
    assert "drive letters exist only on Windows" in err
    assert "Traceback" not in err
    assert os.listdir(short_dir) == []  # no directory named "V:" (nor anything else)


def test_mount_without_target_on_linux_asks_for_a_directory(
    capsys: pytest.CaptureFixture[str], short_dir: str
) -> None:
    code, _out, err = run(capsys, "mount", "SNAP")
    assert code == 2
    assert "give a directory" in err and "only on Windows" in err and "--help" in err
    assert len(err.strip().splitlines()) == 1


def test_a_bare_letter_stays_a_directory_name() -> None:
    assert not wp.looks_like_drive_letter("V")
    assert wp.looks_like_drive_letter("V:")


def test_volume_spec_on_linux_refuses_a_letter(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only on Windows"):
        VolumeSpec.parse(f"{tmp_path}=L:")
    spec = VolumeSpec.parse(f"{tmp_path}={tmp_path}/live")
    assert spec.mountpoint == f"{tmp_path}/live" and not spec.on_letter


def test_daemon_never_makes_a_directory_for_a_letter_on_linux(short_dir: str) -> None:
    d = Daemon([VolumeSpec(short_dir)], socket_path=os.path.join(short_dir, "s.sock"))
    for target in ("V:", "v:\\", None):
        with pytest.raises(UsageError, match="only on Windows"):
            d._prepare_mount_dir(target)
    assert os.listdir(short_dir) == []


# ------------------------------------------------------------- Windows branch


def test_backend_and_specs_on_windows(windows: set[str]) -> None:
    import mount.winfsp

    assert default_backend() is mount.winfsp  # and winfspy is still not imported
    spec = VolumeSpec.parse("D:\\data=l:")
    assert (spec.backing, spec.mountpoint, spec.on_letter, spec.over) == ("D:\\data", "L:", True, False)
    assert VolumeSpec.parse("\\\\srv\\share\\x=M:\\").mountpoint == "M:"
    with pytest.raises(UsageError, match="give D:\\\\data=L:"):
        VolumeSpec.parse("D:\\data")
    with pytest.raises(UsageError, match=r"bad drive letter|bad mount target"):
        VolumeSpec.parse("D:\\data=LL:")


def test_prepare_drive_letter_on_windows(windows: set[str], short_dir: str) -> None:
    d = Daemon([VolumeSpec(short_dir)], socket_path=os.path.join(short_dir, "s.sock"))
    assert d._prepare_mount_dir("v:") == ("V:", False)
    assert d._prepare_mount_dir(None) == ("V:", False)
    windows.add("V:")
    assert d._prepare_mount_dir(None) == ("U:", False)
    with pytest.raises(UsageError, match="drive V: is already in use"):
        d._prepare_mount_dir("V:")
    windows.update(f"{chr(c)}:" for c in range(ord("D"), ord("W")))
    with pytest.raises(UsageError, match="no free drive letter"):
        d._prepare_mount_dir(None)
    assert os.listdir(short_dir) == []


@pytest.fixture
def letter_daemon(windows: set[str], short_dir: str) -> Iterator[dict[str, Any]]:
    """A real daemon (real provider, real socket) whose live view is on L:, as on Windows."""
    pytest.importorskip("vspfs.provider")
    backing = os.path.join(short_dir, "data")
    cache = os.path.join(short_dir, "cache")
    os.mkdir(backing)
    os.mkdir(cache)
    Path(backing, "f.txt").write_text("x")
    backend = FakeBackend()
    d = Daemon(
        [VolumeSpec(backing, "L:")],
        cache_volumes=[cache],
        socket_path=os.environ["VSPFS_SOCKET"],
        state_dir=os.environ["VSPFS_STATE_DIR"],
        backend=backend,  # type: ignore[arg-type]
    )
    try:
        d.start()
        yield {"daemon": d, "backend": backend, "backing": os.path.realpath(backing), "dir": short_dir}
    finally:
        assert d.shutdown()


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_daemon_mounts_on_letters(
    capsys: pytest.CaptureFixture[str], letter_daemon: dict[str, Any], windows: set[str]
) -> None:
    backend: FakeBackend = letter_daemon["backend"]
    assert [(h.mountpoint, h.over) for h in backend.live] == [("L:", False)]
    listing = _json(capsys, "list")
    assert listing["volumes"][0]["mountpoint"] == "L:"
    snap = _json(capsys, "snapshot", "create", "L:", "--mount", "v:")["snapshots"][0]
    assert snap["mount"] == "V:"
    # without a letter: the first free one from V: down, skipping our own V: and L:
    assert _json(capsys, "mount", snap["id"])["mount"] == "U:"
    code, _, err = run(capsys, "mount", snap["id"], "V:")
    assert code == 8 and "already shows snapshot" in err
    code, _, err = run(capsys, "mount", snap["id"], "L:")
    assert code == 8 and "live view" in err
    code, _, err = run(capsys, "mount", snap["id"], "C:")
    assert code == 2 and "drive C: is already in use" in err
    assert [h.mountpoint for h in backend.drives] == ["V:", "U:"]
    status = _json(capsys, "status", snap["id"])
    assert sorted(status["mounts"]) == ["U:", "V:"]
    assert _json(capsys, "unmount", "u:\\")["unmounted"] == "U:"
    code, _, err = run(capsys, "unmount", "L:")
    assert code == 2 and "live view" in err
    assert _json(capsys, "destroy", snap["id"])["destroyed"] == [snap["id"]]
    for name in ("V:", "U:", "L:"):  # nothing was ever created for a letter
        assert not os.path.lexists(os.path.join(letter_daemon["dir"], name))
        assert not os.path.lexists(name)


def test_several_volumes_cannot_share_one_letter(windows: set[str], short_dir: str) -> None:
    pytest.importorskip("vspfs.provider")
    dirs = [os.path.join(short_dir, n) for n in ("a", "b", "cache")]
    for x in dirs:
        os.mkdir(x)
    d = Daemon(
        [VolumeSpec(dirs[0], "L:"), VolumeSpec(dirs[1], "M:")],
        cache_volumes=[dirs[2]],
        socket_path=os.environ["VSPFS_SOCKET"],
        state_dir=os.environ["VSPFS_STATE_DIR"],
        backend=FakeBackend(),  # type: ignore[arg-type]
    )
    try:
        d.start()
        with pytest.raises(UsageError, match="can show one snapshot"):
            d._op_snapshot_create({"volumes": ["L:", "m:"], "mount": "V:"})
        assert d.provider is not None and not d.provider.snapshots  # refused before any snapshot
    finally:
        assert d.shutdown()


def test_taken_live_letter_is_refused_before_anything_starts(windows: set[str], short_dir: str) -> None:
    windows.add("L:")
    d = Daemon(
        [VolumeSpec(short_dir, "L:")], socket_path=os.path.join(short_dir, "s.sock"), backend=FakeBackend()
    )  # type: ignore[arg-type]
    try:
        with pytest.raises(UsageError, match="drive L: is already in use"):
            d.start()
    finally:
        d.shutdown()


def test_on_windows_switch_is_the_platform_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert daemon_mod.on_windows() is False
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    assert daemon_mod.on_windows() is True
    with pytest.raises(MountError, match="drive letters need Windows"):
        import mount.winfsp

        mount.winfsp.load_winfspy()


# -------------------------------------------- flushing the live drives (item 6)


class _FakeKernel32(FakeDll):
    """kernel32 for flush_drive: every call answers ``results[name]`` (default 1, success)."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, object] = {"CreateFileW": 0x1234}
        self.last_error = 0

    def default(self, name: str, args: tuple[object, ...]) -> object:
        return self.results.get(name, 1)


def test_flush_drive_declares_its_calls_and_ignores_the_flush_error(caplog: pytest.LogCaptureFixture) -> None:
    k = _FakeKernel32()
    k.results["FlushFileBuffers"] = 0  # winfspy's volume-flush bug: the caches were flushed before
    k.last_error = 59  # ERROR_UNEXP_NET_ERR, what STATUS_UNEXPECTED_IO_ERROR becomes
    with caplog.at_level(logging.DEBUG, logger="vspfs.winplatform"):
        assert wp.flush_drive("l:", kernel32=k, get_last_error=lambda: k.last_error) is True
    assert [
        len(k.functions[n].argtypes or ()) for n in ("CreateFileW", "FlushFileBuffers", "CloseHandle")
    ] == [
        7,
        1,
        1,
    ]
    assert all(f.restype is not None for f in k.functions.values())
    assert k.calls == [
        ("CreateFileW", ("\\\\.\\L:", 0x40000000, 0x1 | 0x2, None, 3, 0, None)),
        ("FlushFileBuffers", (0x1234,)),
        ("CloseHandle", (0x1234,)),
    ]
    assert caplog.records == []  # the expected error is not even a debug line


def test_flush_drive_logs_other_failures_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    k = _FakeKernel32()
    k.results["CreateFileW"] = wp.INVALID_HANDLE_VALUE
    k.last_error = 5  # ERROR_ACCESS_DENIED
    with caplog.at_level(logging.DEBUG, logger="vspfs.winplatform"):
        assert wp.flush_drive("M:", kernel32=k, get_last_error=lambda: k.last_error) is False
        assert [n for n, _ in k.calls] == ["CreateFileW"]  # nothing to flush or close
        k.results.update({"CreateFileW": 0x99, "CloseHandle": 0})
        assert wp.flush_drive("M:", kernel32=k, get_last_error=lambda: k.last_error) is True
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "cannot open M: to flush it (Win32 error 5)"),
        (logging.DEBUG, "cannot close the handle of M: (Win32 error 5)"),
    ]
    with pytest.raises(UsageError, match="bad drive letter"):
        wp.flush_drive("LL:", kernel32=k)


def test_flush_drive_does_nothing_off_windows() -> None:
    assert wp.flush_drive("L:") is False  # no kernel32 here, and none is loaded


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What happens in which order: ("flush", letter) and ("hold", backing) events."""
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(wp, "flush_drive", lambda letter: events.append(("flush", letter)) or True)
    return events


def _record_holds(monkeypatch: pytest.MonkeyPatch, daemon: Daemon, events: list[tuple[str, str]]) -> None:
    for live in daemon._live:
        vol = live.volume
        real = vol.hold_changes

        def hold(*args: Any, vol: Any = vol, real: Any = real, **kwargs: Any) -> Any:
            events.append(("hold", vol.backing))
            return real(*args, **kwargs)

        monkeypatch.setattr(vol, "hold_changes", hold)


def test_live_drives_are_flushed_before_the_snapshot_set_holds_writes(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    windows: set[str],
    short_dir: str,
    order: list[tuple[str, str]],
) -> None:
    pytest.importorskip("vspfs.provider")
    dirs = [os.path.join(short_dir, n) for n in ("a", "b", "c", "cache")]
    for x in dirs:
        os.mkdir(x)
    d = Daemon(
        [VolumeSpec(dirs[0], "L:"), VolumeSpec(dirs[1], "M:"), VolumeSpec(dirs[2], "N:")],
        cache_volumes=[dirs[3]],
        socket_path=os.environ["VSPFS_SOCKET"],
        state_dir=os.environ["VSPFS_STATE_DIR"],
        backend=FakeBackend(),  # type: ignore[arg-type]
    )
    try:
        d.start()
        _record_holds(monkeypatch, d, order)
        a, b = (os.path.realpath(x) for x in dirs[:2])
        _json(capsys, "snapshot", "create", "M:", "L:")  # a set of two: N: is not in it
        assert sorted(order[:2]) == [("flush", "L:"), ("flush", "M:")]
        assert sorted(order[2:]) == [("hold", a), ("hold", b)]
        order.clear()
        _json(capsys, "snapshot", "create", "N:", "--busy-file-wait", "0.01")  # through the quiet period
        assert order[0] == ("flush", "N:") and [e for e, _ in order[1:]] == ["hold"]
    finally:
        assert d.shutdown()


def test_nothing_is_flushed_on_linux(
    monkeypatch: pytest.MonkeyPatch, short_dir: str, order: list[tuple[str, str]]
) -> None:
    vol = type("V", (), {})()
    d = Daemon([VolumeSpec(short_dir)], socket_path=os.path.join(short_dir, "s.sock"))
    d._live.append(daemon_mod._Live(VolumeSpec(short_dir, "L:"), vol, "L:", FakeHandle("L:")))  # type: ignore[arg-type]
    d.flush_live_drives([vol])  # type: ignore[list-item]
    assert order == []
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    d.flush_live_drives([vol])  # type: ignore[list-item]
    assert order == [("flush", "L:")]


# -------------------------------------------- directories for WinFsp to create


def test_a_drive_directory_is_left_for_winfsp_to_create(
    capsys: pytest.CaptureFixture[str], letter_daemon: dict[str, Any]
) -> None:
    backend: FakeBackend = letter_daemon["backend"]
    base = letter_daemon["dir"]
    snap = _json(capsys, "snapshot", "create", "L:")["snapshots"][0]["id"]
    target = os.path.join(base, "snap")
    assert _json(capsys, "mount", snap, target)["mount"] == target
    assert [h.mountpoint for h in backend.drives] == [target] and not os.path.lexists(
        target
    )  # WinFsp would make it
    code, _, err = run(capsys, "mount", snap, target)
    assert code == 8 and "already shows snapshot" in err
    os.mkdir(os.path.join(base, "old"))
    code, _, err = run(capsys, "mount", snap, os.path.join(base, "old"))
    assert code == 2 and "WinFsp creates" in err
    code, _, err = run(capsys, "mount", snap, os.path.join(base, "none", "x"))
    assert code == 2 and "parent directory" in err
    code, _, err = run(capsys, "mount", snap, os.path.join(letter_daemon["backing"], "x"))
    assert code == 2 and "inside served volume" in err
    os.mkdir(target)  # what WinFsp leaves after the unmount, if anything, the daemon removes
    assert _json(capsys, "unmount", target)["unmounted"] == target
    assert not os.path.lexists(target)


def test_a_backup_job_on_windows_flushes_first_and_mounts_on_new_directories(
    monkeypatch: pytest.MonkeyPatch, letter_daemon: dict[str, Any], order: list[tuple[str, str]]
) -> None:
    d: Daemon = letter_daemon["daemon"]
    backend: FakeBackend = letter_daemon["backend"]
    _record_holds(monkeypatch, d, order)
    seen: list[bool] = []
    mount_snapshot = backend.mount_snapshot

    def mount(snapshot: object, mountpoint: str, **kw: Any) -> FakeHandle:
        seen.append(os.path.lexists(mountpoint))  # the daemon must not have made it
        return mount_snapshot(snapshot, mountpoint, **kw)

    monkeypatch.setattr(backend, "mount_snapshot", mount)
    args = {"job": "job-on-windows", "volumes": ["L:"], "busy_file_wait": 0, "busy_file_timeout": 5}
    args.update(on_timeout="continue", on_error="abort")
    reports: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: reports.append(d.jobs.op_start(args)))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status = d.jobs.op_status({"job": args["job"]})
            except UsageError:  # not registered yet
                status = {}
            if status.get("phase") in ("ready", "ended"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        d.jobs.op_finish({"job": args["job"]})
        t.join(10)
    (vol,) = status["volumes"]
    assert vol["source"] == "snapshot" and vol["drive"] == backend.drives[0].mountpoint
    assert seen == [False]
    assert order == [("flush", "L:"), ("hold", letter_daemon["backing"])]
    assert reports and reports[0]["ended_by"] == "finished"
