"""CLI and daemon tests that need no FUSE mount.

What a user sees when something goes wrong is part of the interface: one
line, ``vspfs: error: ...``, and the documented exit code (docs/cli.md). These
tests pin that down for argument errors, a missing daemon, errors the daemon
sends back and unexpected exceptions; they also check the --json shapes
against a real daemon whose mount adapter is replaced by a fake (the control
channel, provider and cache files are real; only the kernel mounts are not).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fake_mounts import FakeBackend
from vspfs import cli as cli_mod
from vspfs.cli import cli, main
from vspfs.daemon import VolumeSpec, _unescape_mountinfo, processes_holding
from vspfs.errors import SnapshotInvalid, VspError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: Unix socket paths are limited to 107 bytes."""
    d = tempfile.mkdtemp(prefix="vsp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def no_daemon(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the CLI at a socket nobody serves, and at a private state dir."""
    sock = os.path.join(short_dir, "none.sock")
    monkeypatch.setenv("VSPFS_SOCKET", sock)
    monkeypatch.setenv("VSPFS_STATE_DIR", os.path.join(short_dir, "state"))
    monkeypatch.delenv("VSPFS_DEBUG", raising=False)
    return sock


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``vspfs ARGS`` through main() as the console script does; (code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else int(code)), out, err


def assert_one_error_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vspfs: error: "), err
    assert "Traceback" not in err


# --------------------------------------------------------------------- help

COMMANDS = [
    [],
    ["serve"],
    ["snapshot"],
    ["snapshot", "create"],
    ["mount"],
    ["unmount"],
    ["list"],
    ["status"],
    ["destroy"],
    ["cleanup"],
]


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "vspfs")
def test_help_of_every_command(words: list[str]) -> None:
    result = CliRunner().invoke(cli, [*words, "--help"], prog_name="vspfs")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(['vspfs', *words])} ")


@pytest.mark.parametrize(
    "words",
    [w for w in COMMANDS if w and w != ["snapshot"]] + [["snapshot", "create"]],
    ids=lambda w: " ".join(w),
)
def test_every_command_has_json(words: list[str]) -> None:
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert "--json" in result.output


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert "vspfs" in out


# ------------------------------------------------------------ usage errors


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["destroy"],
        ["mount", "only-one"],
        ["unmount"],
        ["snapshot", "create"],
        ["serve"],
        ["list", "--no-such-option"],
        ["snapshot", "create", "x", "--policy", "never"],
        ["--timeout", "0", "list"],
        ["--timeout", "inf", "list"],
        ["snapshot", "create", "x", "--busy-file-wait", "1e400"],  # infinity: not JSON (found by the fuzzer)
        ["snapshot", "create", "x", "--busy-file-timeout", "nan"],
        ["status", "a", "b"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_arguments_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], no_daemon: str, args: list[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert_one_error_line(err)
    assert "--help" in err  # points at the right help


def test_bare_vspfs_shows_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys)
    assert code in (0, 2)  # click < 8.2 exits 0 here
    assert "Usage:" in err or "Usage:" in _out


# --------------------------------------------------------------- no daemon


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--json"],
        ["status"],
        ["status", "20240101T000000-abcdef"],
        ["snapshot", "create", "/srv/data"],
        ["snapshot", "create", "/srv/a", "/srv/b", "--mount", "/mnt/snap", "--json"],
        ["mount", "20240101T000000-abcdef", "/mnt/snap"],
        ["unmount", "/mnt/snap"],
        ["destroy", "20240101T000000-abcdef"],
    ],
    ids=lambda a: " ".join(a),
)
def test_no_daemon_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], no_daemon: str, args: list[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 3
    assert out == ""
    assert_one_error_line(err)
    assert "no vspfs daemon is running" in err
    assert no_daemon in err
    assert "vspfs serve" in err


def test_global_socket_option_beats_environment(
    capsys: pytest.CaptureFixture[str], no_daemon: str, short_dir: str
) -> None:
    other = os.path.join(short_dir, "other.sock")
    code, _, err = run(capsys, "--socket", other, "list")
    assert code == 3
    assert other in err


def test_no_daemon_as_a_real_process(no_daemon: str) -> None:
    """The console script path: no traceback, exit 3, one line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "vspfs.cli", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert_one_error_line(done.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--over", "--at", "M"], "exclude each other"),
        (["--at", "M", "B2"], "takes one BACKING"),
        (["--at", "M", "B=N"], "takes one BACKING"),
        (["--over", "B=N"], "drop =MOUNTPOINT"),
    ],
)
def test_serve_over_and_at_forms_are_checked(
    capsys: pytest.CaptureFixture[str], short_dir: str, args: list[str], message: str
) -> None:
    """`serve BACKING --at MOUNTPOINT` / `--over` (DESIGN.md's forms) refuse what they cannot mean."""
    real = [os.path.join(short_dir, a) if a in ("M", "B2", "B=N") else a for a in args]
    code, out, err = run(capsys, "serve", os.path.join(short_dir, "B"), *real)
    assert code == 2 and message in err and out == ""
    assert_one_error_line(err)


def test_serve_with_missing_backing_dir_names_it(short_dir: str) -> None:
    missing = os.path.join(short_dir, "nope")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VSPFS_SOCKET": os.path.join(short_dir, "s.sock"),
        "VSPFS_STATE_DIR": os.path.join(short_dir, "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "vspfs.cli", "serve", missing],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr)
    assert missing in done.stderr


def test_serve_with_file_as_mountpoint(short_dir: str) -> None:
    backing = os.path.join(short_dir, "b")
    os.mkdir(backing)
    afile = os.path.join(short_dir, "f")
    Path(afile).write_text("x")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VSPFS_SOCKET": os.path.join(short_dir, "s.sock"),
        "VSPFS_STATE_DIR": os.path.join(short_dir, "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "vspfs.cli", "serve", f"{backing}={afile}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr)
    assert afile in done.stderr and "not a directory" in done.stderr


# ----------------------------------------------- errors from the daemon side


def _fake_request(exc: BaseException):
    def fake(op: str, args: dict | None = None, **kw: Any) -> object:
        raise exc

    return fake


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SnapshotInvalid("s1", "cache file reached its maximum"), 6),
        (VspError("something refused"), 1),
    ],
)
def test_daemon_errors_keep_their_exit_code(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_daemon: str,
    exc: BaseException,
    code: int,
) -> None:
    monkeypatch.setattr("vspfs.control.request", _fake_request(exc))
    got, _out, err = run(capsys, "status", "s1")
    assert got == code
    assert_one_error_line(err)
    assert str(exc) in err


def test_unexpected_exception_is_one_line_and_70(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_daemon: str
) -> None:
    monkeypatch.setattr("vspfs.control.request", _fake_request(RuntimeError("boom\nsecond line")))
    code, _, err = run(capsys, "list")
    assert code == 70
    assert_one_error_line(err)
    assert "internal error: RuntimeError: boom second line" in err
    assert "VSPFS_DEBUG=1" in err


@pytest.mark.parametrize("how", ["env", "flag"])
def test_traceback_only_when_asked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_daemon: str, how: str
) -> None:
    monkeypatch.setattr("vspfs.control.request", _fake_request(RuntimeError("boom")))
    if how == "env":
        monkeypatch.setenv("VSPFS_DEBUG", "1")
        code, _, err = run(capsys, "list")
    else:
        code, _, err = run(capsys, "-v", "list")
    assert code == 70
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("vspfs: error: internal error")


def test_interrupt_is_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_daemon: str
) -> None:
    monkeypatch.setattr("vspfs.control.request", _fake_request(KeyboardInterrupt()))
    code, _, err = run(capsys, "list")
    assert code == 130
    assert_one_error_line(err)


def test_os_error_is_one_line_and_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_daemon: str
) -> None:
    monkeypatch.setattr(
        "vspfs.control.request", _fake_request(PermissionError(13, "Permission denied", "/srv/x"))
    )
    code, _, err = run(capsys, "list")
    assert code == 1
    assert_one_error_line(err)
    assert "/srv/x: Permission denied" in err


# ------------------------------------------------- what the CLI sends, shapes


class Recorder:
    """Stands in for control.request: records requests, returns canned results."""

    def __init__(self, result: object) -> None:
        self.result = result
        self.calls: list[tuple[str, dict, dict]] = []

    def __call__(self, op: str, args: dict | None = None, **kw: Any) -> object:
        self.calls.append((op, dict(args or {}), kw))
        return self.result


def test_paths_are_sent_absolute(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_daemon: str, tmp_path: Path
) -> None:
    rec = Recorder({"snapshots": []})
    monkeypatch.setattr("vspfs.control.request", rec)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vol").mkdir()
    code, _, err = run(capsys, "snapshot", "create", "vol", "byname", "--mount", "snap", "--json")
    assert code == 0, err
    op, args, kw = rec.calls[0]
    assert op == "snapshot.create"
    assert args["volumes"] == [str(tmp_path / "vol"), "byname"]
    assert args["mount"] == str(tmp_path / "snap")
    assert kw["socket_path"] == no_daemon


def test_json_output_is_the_reply(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_daemon: str
) -> None:
    reply = {"destroyed": ["a", "b"]}
    monkeypatch.setattr("vspfs.control.request", Recorder(reply))
    code, out, _ = run(capsys, "destroy", "a", "b", "--json")
    assert code == 0
    assert json.loads(out) == reply
    code, out, _ = run(capsys, "destroy", "a", "b")
    assert out.splitlines() == ["destroyed snapshot a", "destroyed snapshot b"]


def test_volume_spec_parsing(tmp_path: Path) -> None:
    assert VolumeSpec.parse("/srv/data") == VolumeSpec("/srv/data", None)
    assert VolumeSpec.parse("/srv/data=/mnt/live") == VolumeSpec("/srv/data", "/mnt/live")
    spec = VolumeSpec.parse("/srv/data=/mnt/live")
    assert spec.target == "/mnt/live" and not spec.over
    assert VolumeSpec.parse("/srv/data").over
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert VolumeSpec.parse(str(odd)) == VolumeSpec(str(odd), None)  # an existing path is taken whole
    for bad in ("", "=/mnt", "/srv="):
        with pytest.raises(VspError):
            VolumeSpec.parse(bad)


def test_mountinfo_unescape() -> None:
    assert _unescape_mountinfo(r"/mnt/with\040space") == "/mnt/with space"
    assert _unescape_mountinfo(r"/plain") == "/plain"
    assert _unescape_mountinfo("/tail\\04") == "/tail\\04"


def test_open_files_under_a_backing_dir_are_found(tmp_path: Path) -> None:
    target = tmp_path / "held.txt"
    target.write_text("x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1],'a'); print('ok',flush=True); time.sleep(60)",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ok"
        found = processes_holding([str(tmp_path)])
        holders = found.get(os.path.realpath(tmp_path), [])
        mine = [h for h in holders if h.pid == holder.pid]
        assert mine and os.path.realpath(target) in mine[0].paths
    finally:
        holder.kill()
        holder.wait(timeout=10)


# ------------------------------------- a real daemon with a fake mount adapter


@pytest.fixture
def fake_daemon(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    pytest.importorskip("vspfs.provider", reason="the core (vspfs.provider) is not importable yet")
    from vspfs.daemon import Daemon

    backing = os.path.join(short_dir, "data")
    live = os.path.join(short_dir, "live")
    cache = os.path.join(short_dir, "cache")
    state = os.path.join(short_dir, "state")
    for d in (backing, live, cache):
        os.mkdir(d)
    Path(backing, "hello.txt").write_text("hello\n")
    sock = os.path.join(short_dir, "d.sock")
    monkeypatch.setenv("VSPFS_SOCKET", sock)
    monkeypatch.setenv("VSPFS_STATE_DIR", state)
    backend = FakeBackend()
    daemon = Daemon(
        [VolumeSpec(backing, live)],
        cache_volumes=[cache],
        socket_path=sock,
        state_dir=state,
        backend=backend,  # type: ignore[arg-type]
    )
    try:
        daemon.start()
        yield {
            "daemon": daemon,
            "backend": backend,
            "backing": os.path.realpath(backing),
            "live": os.path.realpath(live),
            "cache": os.path.realpath(cache),
            "state": state,
            "dir": short_dir,
            "socket": sock,
        }
    finally:
        assert daemon.shutdown()


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


STATUS_FIELDS = {
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
}


def test_daemon_json_shapes_and_lifecycle(
    capsys: pytest.CaptureFixture[str], fake_daemon: dict[str, Any]
) -> None:
    fd = fake_daemon
    assert [h.mountpoint for h in fd["backend"].live] == [fd["live"]]

    listing = _json(capsys, "list")
    assert listing["snapshots"] == []
    (vol,) = listing["volumes"]
    assert vol["backing"] == fd["backing"] and vol["mountpoint"] == fd["live"] and vol["over"] is False

    # a volume may be named by its live-view path or its backing path
    created = _json(capsys, "snapshot", "create", fd["live"])
    (snap,) = created["snapshots"]
    assert snap["state"] == "valid" and snap["mount"] is None
    assert snap["volume"]["backing"] == fd["backing"]
    assert snap["volume"]["mountpoint"] == fd["live"]
    assert os.path.dirname(snap["cache_file"]) == fd["cache"]
    assert os.path.basename(snap["cache_file"]) == f"VSP_{snap['id']}.vsp"
    assert os.path.exists(snap["cache_file"])
    sid = snap["id"]

    status = _json(capsys, "status", sid)
    assert set(status) >= STATUS_FIELDS
    assert status["id"] == sid and status["mounts"] == []
    assert status["created"].endswith("+00:00")

    # cleanup while a snapshot lives: its cache file is neither removed nor reported
    during = _json(capsys, "cleanup")
    assert during == {"removed": [], "kept": [], "daemon": True}
    assert os.path.exists(snap["cache_file"])

    full = _json(capsys, "status")
    assert full["daemon"]["pid"] == os.getpid()
    assert [s["id"] for s in full["snapshots"]] == [sid]

    drive = os.path.join(fd["dir"], "drive")
    mounted = _json(capsys, "mount", sid, drive)
    assert mounted == {"snapshot": sid, "mount": os.path.realpath(drive)}
    assert os.path.isdir(drive)  # made for us
    assert _json(capsys, "status", sid)["mounts"] == [os.path.realpath(drive)]
    assert _json(capsys, "list")["snapshots"][0]["mounts"] == [os.path.realpath(drive)]

    # the same directory twice: the mount cannot be made (8); the live view,
    # an unknown dir, a dir inside a volume: one-line usage errors (2)
    code, _, err = run(capsys, "mount", sid, drive)
    assert code == 8 and "unmount it first" in err
    code, _, err = run(capsys, "unmount", fd["live"])
    assert code == 2 and "live view" in err
    assert_one_error_line(err)
    code, _, err = run(capsys, "unmount", os.path.join(fd["dir"], "elsewhere"))
    assert code == 2 and "not a virtual drive" in err
    code, _, err = run(capsys, "mount", sid, os.path.join(fd["backing"], "inside"))
    assert code == 2 and "inside served volume" in err

    unmounted = _json(capsys, "unmount", drive)
    assert unmounted == {"snapshot": sid, "unmounted": os.path.realpath(drive)}
    assert not os.path.exists(drive)  # we made it, we removed it

    code, _, err = run(capsys, "status", "no-such-snapshot")
    assert code == 2
    assert_one_error_line(err)
    code, _, err = run(capsys, "snapshot", "create", os.path.join(fd["dir"], "not-served"))
    assert code == 2 and "not a served volume" in err
    code, _, err = run(capsys, "destroy", sid, "no-such-snapshot")
    assert code == 2
    assert os.path.exists(snap["cache_file"])  # all or nothing

    # human output is short and names things
    code, out, _ = run(capsys, "list")
    assert code == 0 and sid in out and fd["backing"] in out
    code, out, _ = run(capsys, "status", sid)
    assert code == 0 and "cache file" in out and snap["cache_file"] in out

    # several mounts at once: --mount DIR with one volume mounts at DIR itself
    again = _json(capsys, "snapshot", "create", fd["backing"], "--mount", os.path.join(fd["dir"], "m2"))
    sid2 = again["snapshots"][0]["id"]
    assert again["snapshots"][0]["mount"] == os.path.realpath(os.path.join(fd["dir"], "m2"))

    destroyed = _json(capsys, "destroy", sid, sid2)
    assert destroyed == {"destroyed": [sid, sid2]}
    assert not os.path.exists(snap["cache_file"])
    assert all(not h.mounted for h in fd["backend"].drives)
    assert _json(capsys, "list")["snapshots"] == []

    cleaned = _json(capsys, "cleanup")
    assert cleaned["daemon"] is True and cleaned["removed"] == []


def test_daemon_shutdown_leaves_nothing(
    capsys: pytest.CaptureFixture[str], fake_daemon: dict[str, Any]
) -> None:
    fd = fake_daemon
    created = _json(capsys, "snapshot", "create", fd["backing"], "--mount", os.path.join(fd["dir"], "m"))
    cache_file = created["snapshots"][0]["cache_file"]
    assert os.path.exists(cache_file)
    assert fd["daemon"].shutdown()
    assert not os.path.exists(cache_file)
    assert all(not h.mounted for h in fd["backend"].drives + fd["backend"].live)
    assert not os.path.exists(fd["socket"])
    assert not [n for n in os.listdir(fd["state"]) if n.startswith("served-")]
    code, _, _err = run(capsys, "list")
    assert code == 3


def test_second_daemon_on_the_same_socket_is_refused(
    capsys: pytest.CaptureFixture[str], fake_daemon: dict[str, Any]
) -> None:
    from vspfs.daemon import Daemon

    other = os.path.join(fake_daemon["dir"], "other")
    os.mkdir(other)
    second = Daemon(
        [VolumeSpec(other)],
        socket_path=fake_daemon["socket"],
        state_dir=fake_daemon["state"],
        backend=FakeBackend(),  # type: ignore[arg-type]
    )
    try:
        with pytest.raises(VspError, match="another vspfs daemon is running"):
            second.start()
    finally:
        second.shutdown()
    assert _json(capsys, "list")["volumes"][0]["backing"] == fake_daemon["backing"]


def test_cleanup_without_daemon_removes_stale_cache_file(
    capsys: pytest.CaptureFixture[str], no_daemon: str, short_dir: str
) -> None:
    """A cache file whose owner died is removed by `vspfs cleanup DIR` with no daemon."""
    pytest.importorskip("vspfs.provider", reason="the core (vspfs.provider) is not importable yet")
    cache = os.path.join(short_dir, "cache")
    os.mkdir(cache)
    make = (
        "import os, sys\n"
        "from vspfs.cachefile import CacheFile\n"
        "c = CacheFile.create(sys.argv[1], 'dead-1', 'vol1', volume_path=sys.argv[1], chunk_size=65536)\n"
        "print(c.path, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", make, cache],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stale = [n for n in os.listdir(cache) if n.startswith("VSP_")]
    assert stale, "the helper did not leave a cache file"
    result = _json(capsys, "cleanup", cache)
    assert result["daemon"] is False
    assert [os.path.basename(p) for p in result["removed"]] == stale
    assert not [n for n in os.listdir(cache) if n.startswith("VSP_")]
    code, out, _ = run(capsys, "cleanup", cache)
    assert code == 0 and out.strip() == "nothing to clean up"


def test_cleanup_without_daemon_refuses_a_missing_dir(
    capsys: pytest.CaptureFixture[str], no_daemon: str, short_dir: str
) -> None:
    pytest.importorskip("vspfs.provider", reason="the core (vspfs.provider) is not importable yet")
    missing = os.path.join(short_dir, "gone")
    code, _, err = run(capsys, "cleanup", missing)
    assert code == 2
    assert_one_error_line(err)
    assert missing in err


def test_state_dir_default_respects_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from vspfs.daemon import default_state_dir

    monkeypatch.setenv("VSPFS_STATE_DIR", "/x/y")
    assert default_state_dir() == "/x/y"
    monkeypatch.delenv("VSPFS_STATE_DIR")
    assert default_state_dir()


def test_exit_code_table_matches_errors() -> None:
    """docs/cli.md documents these numbers; the error classes must agree."""
    from vspfs import errors

    assert errors.UsageError.exit_code == cli_mod.EXIT_USAGE
    assert errors.DaemonNotRunning.exit_code == cli_mod.EXIT_NO_DAEMON
    assert errors.RuleViolation.exit_code == cli_mod.EXIT_RULE
    assert errors.CacheFileError.exit_code == cli_mod.EXIT_CACHE_FILE
    assert errors.SnapshotInvalid.exit_code == cli_mod.EXIT_SNAPSHOT_INVALID
    assert errors.CacheFull.exit_code == cli_mod.EXIT_SNAPSHOT_INVALID
    assert errors.ReadOnly.exit_code == cli_mod.EXIT_READ_ONLY
    assert errors.MountError.exit_code == cli_mod.EXIT_MOUNT
    doc = (REPO / "docs" / "cli.md").read_text()
    for code in (0, 1, 2, 3, 4, 5, 6, 7, 8, 70, 130):
        assert f"| {code} " in doc, code
    assert "10-19" in doc


def test_janitor_does_nothing_after_a_clean_exit(tmp_path: Path) -> None:
    """No record (clean shutdown) or a record of another daemon: the janitor just exits."""
    from vspfs.daemon import janitor

    gone = subprocess.Popen(["true"])
    gone.wait(timeout=30)
    missing = tmp_path / "served-x.json"
    assert janitor(gone.pid, str(missing), grace=0) == 0
    other = tmp_path / "served-y.json"
    other.write_text(json.dumps({"pid": gone.pid + 1, "volumes": [{"backing": "/", "mountpoint": "/"}]}))
    assert janitor(gone.pid, str(other), grace=0) == 0
    mine = tmp_path / "served-z.json"
    mine.write_text(json.dumps({"pid": gone.pid, "volumes": [{"backing": str(tmp_path), "mountpoint": "/"}]}))
    assert janitor(gone.pid, str(mine), grace=0) == 0  # "/" is no vspfs mount: left alone
