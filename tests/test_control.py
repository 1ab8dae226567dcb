"""Tests of the control channel (vspfs.control): protocol, errors, security, robustness.

The channel is the daemon's only door, so these tests attack it the way a
buggy or hostile local client would (garbage, huge length prefixes, silence,
a wrong key, another uid) and check each time that the server answers cleanly
and keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vspfs import control
from vspfs.control import (
    MAX_MESSAGE,
    AccessDenied,
    ControlServer,
    InternalError,
    ProtocolError,
    ServerBusy,
    default_socket_path,
    request,
)
from vspfs.errors import DaemonNotRunning, SnapshotInvalid, UsageError, VspError


class _UnlistedError(VspError):
    """A VspError subclass the client cannot find in vspfs.errors."""

    exit_code = 42


def _handler(op: str, args: dict) -> object:
    """Operations the tests call; each exercises one kind of outcome."""
    if op == "echo":
        return args
    if op == "usage":
        raise UsageError("bad drive letter Q:: use a free letter such as R:")
    if op == "invalid":
        raise SnapshotInvalid("snap1", "the cache file reached its maximum size")
    if op == "unlisted":
        raise _UnlistedError("something specific went wrong")
    if op == "boom":
        raise RuntimeError("kaboom\nsecond line")
    if op == "unserializable":
        return object()
    if op == "huge":
        return "x" * (MAX_MESSAGE + 10)
    if op == "sleep":
        time.sleep(args["seconds"])
        return "slept"
    raise UsageError(f"unknown operation {op!r}")


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A socket path in a short private temp dir (sun_path allows only 107 bytes).

    The socket's own directory does not exist yet, so the server creates it.
    """
    base = tempfile.mkdtemp(prefix="vsc-")
    try:
        yield os.path.join(base, "ctl", "s.sock")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def serve() -> Iterator[Callable[..., ControlServer]]:
    """Start servers for a test and close every one of them afterwards."""
    servers: list[ControlServer] = []

    def start(path: str, handler: Callable[[str, dict], object] = _handler, **kw: object) -> ControlServer:
        server = ControlServer(path, handler, **kw)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def _read_reply(sock: socket.socket) -> dict:
    """Read one framed reply and check that the server closed the connection after it."""
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        assert chunk, "connection closed without a reply"
        header += chunk
    (length,) = struct.unpack(">I", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "reply cut short"
        body += chunk
    try:
        rest = sock.recv(1)
    except ConnectionResetError:
        rest = b""  # closed with our unread bytes still queued: as good as EOF
    assert rest == b"", "server kept the connection open after the reply"
    return json.loads(body)


def _raw(path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def _key(server: ControlServer) -> str:
    return Path(server.key_path).read_text().strip()


# ------------------------------------------------------------------ basics


def test_round_trip(serve: Callable[..., ControlServer], sock_path: str) -> None:
    serve(sock_path)
    args = {"volumes": ["/srv/data", "/srv/ünïcode ✓"], "n": 3, "nested": {"a": [1, 2.5, None, True]}}
    assert request("echo", args, socket_path=sock_path) == args
    assert request("echo", socket_path=sock_path) == {}


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSPFS_SOCKET", "/somewhere/v.sock")
    assert default_socket_path() == "/somewhere/v.sock"
    monkeypatch.delenv("VSPFS_SOCKET")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_socket_path() == "/run/vspfs/vspfs.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert default_socket_path() == "/run/user/1234/vspfs/vspfs.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == os.path.join(tempfile.gettempdir(), "vspfs-1234", "vspfs.sock")


def test_request_uses_default_socket_path(
    serve: Callable[..., ControlServer], sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSPFS_SOCKET", sock_path)
    serve(default_socket_path())
    assert request("echo", {"x": 1}) == {"x": 1}


def test_daemon_not_running(sock_path: str) -> None:
    with pytest.raises(DaemonNotRunning) as info:
        request("echo", socket_path=sock_path)
    assert str(info.value) == (
        f"no vspfs daemon is running on {sock_path}: start one with `vspfs serve BACKING`"
    )
    assert info.value.exit_code == 3


def test_daemon_not_running_on_stale_socket(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path), mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nothing listens: like a daemon killed with SIGKILL
    with pytest.raises(DaemonNotRunning):
        request("echo", socket_path=sock_path)


# ------------------------------------------------------------------ errors


def test_error_mapping(
    serve: Callable[..., ControlServer], sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    serve(sock_path)

    with pytest.raises(UsageError) as usage:
        request("usage", socket_path=sock_path)
    assert type(usage.value) is UsageError
    assert str(usage.value) == "bad drive letter Q:: use a free letter such as R:"
    assert usage.value.exit_code == 2

    with pytest.raises(SnapshotInvalid) as invalid:
        request("invalid", socket_path=sock_path)
    assert str(invalid.value) == "snapshot snap1 is invalid: the cache file reached its maximum size"
    assert invalid.value.snapshot_id == "snap1"
    assert invalid.value.reason == "the cache file reached its maximum size"
    assert invalid.value.exit_code == 6

    with pytest.raises(VspError) as unlisted:
        request("unlisted", socket_path=sock_path)
    assert type(unlisted.value) is VspError  # unknown type name -> base class
    assert str(unlisted.value) == "something specific went wrong"
    assert unlisted.value.exit_code == 42  # but the daemon's exit code is kept

    with caplog.at_level(logging.ERROR, logger="vspfs.control"), pytest.raises(InternalError) as internal:
        request("boom", socket_path=sock_path)
    message = str(internal.value)
    assert "\n" not in message
    assert "RuntimeError: kaboom second line" in message
    assert "Traceback" not in message
    assert any(r.exc_info and "kaboom" in str(r.exc_info[1]) for r in caplog.records), "no traceback logged"

    with pytest.raises(InternalError):
        request("unserializable", socket_path=sock_path)
    with pytest.raises(InternalError, match="cannot be sent"):
        request("huge", socket_path=sock_path)

    # none of that hurt the server
    assert request("echo", {"still": "alive"}, socket_path=sock_path) == {"still": "alive"}


def test_request_rejects_unsendable_args(sock_path: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        request("echo", {"blob": "x" * (MAX_MESSAGE + 1)}, socket_path=sock_path)
    with pytest.raises(TypeError):
        request("echo", {"obj": object()}, socket_path=sock_path)


def test_reply_timeout_and_no_timeout(serve: Callable[..., ControlServer], sock_path: str) -> None:
    serve(sock_path)
    with pytest.raises(ProtocolError, match="no reply"):
        request("sleep", {"seconds": 1.0}, socket_path=sock_path, timeout=0.2)
    assert request("sleep", {"seconds": 0.5}, socket_path=sock_path, timeout=None) == "slept"


# ------------------------------------------------------------------ authentication


def test_wrong_key_rejected(serve: Callable[..., ControlServer], sock_path: str) -> None:
    calls: list[str] = []

    def handler(op: str, args: dict) -> object:
        calls.append(op)
        return "ran"

    server = serve(sock_path, handler)
    for bad in ("0" * 64, "", _key(server)[:-1], 12345, None):
        with _raw(sock_path) as sock:
            sock.sendall(_frame({"key": bad, "op": "echo", "args": {}}))
            reply = _read_reply(sock)
        assert reply["ok"] is False
        assert reply["error"]["type"] == "AccessDenied"
    with _raw(sock_path) as sock:  # no key field at all
        sock.sendall(_frame({"op": "echo", "args": {}}))
        assert _read_reply(sock)["error"]["type"] == "AccessDenied"

    # through the client, with a key file that holds the wrong key
    key_path = server.key_path
    os.unlink(key_path)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"f" * 64)
    os.close(fd)
    with pytest.raises(AccessDenied, match="wrong or missing control key"):
        request("echo", socket_path=sock_path)
    assert calls == [], "the handler ran for an unauthenticated request"


def test_missing_key_file(serve: Callable[..., ControlServer], sock_path: str) -> None:
    server = serve(sock_path)
    os.unlink(server.key_path)
    with pytest.raises(AccessDenied) as info:
        request("echo", socket_path=sock_path)
    assert server.key_path in str(info.value)
    assert "missing" in str(info.value)


def test_key_file_readable_by_others_is_refused(serve: Callable[..., ControlServer], sock_path: str) -> None:
    server = serve(sock_path)
    os.chmod(server.key_path, 0o644)
    with pytest.raises(AccessDenied, match="private"):
        request("echo", socket_path=sock_path)


def test_client_refuses_socket_served_by_another_uid(
    serve: Callable[..., ControlServer], sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve(sock_path)
    monkeypatch.setattr(control, "_peer_uid", lambda sock: 12345)
    with pytest.raises(AccessDenied, match="served by uid 12345"):
        request("echo", socket_path=sock_path)


def test_permissions(serve: Callable[..., ControlServer], sock_path: str) -> None:
    old_umask = os.umask(0)  # the most permissive umask must not leak into our files
    try:
        server = serve(sock_path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o700
    sock_st = os.lstat(sock_path)
    assert stat.S_ISSOCK(sock_st.st_mode)
    assert stat.S_IMODE(sock_st.st_mode) == 0o600
    key_st = os.lstat(server.key_path)
    assert stat.S_ISREG(key_st.st_mode)
    assert stat.S_IMODE(key_st.st_mode) == 0o600
    key = _key(server)
    assert len(key) == 64
    int(key, 16)
    # no temporary files left beside them
    leftovers = set(os.listdir(os.path.dirname(sock_path))) - {"s.sock", "s.sock.key", "s.sock.lock"}
    assert leftovers == set()


def test_unsafe_socket_directory_refused(sock_path: str, tmp_path: Path) -> None:
    directory = os.path.dirname(sock_path)
    os.mkdir(directory)
    os.chmod(directory, 0o777)  # writable by everyone, not sticky: others could swap our socket
    with pytest.raises(UsageError, match="writable by others"):
        ControlServer(sock_path, _handler).start()
    os.rmdir(directory)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    os.symlink(target, directory)
    with pytest.raises(UsageError, match="not a plain directory"):
        ControlServer(sock_path, _handler).start()


def _other_uid_client(sock_path: str) -> dict:
    """Run a raw client as uid/gid 65534 in a subprocess and return what it saw.

    The child does not import vspfs: it is a plain stdlib client, so it can run
    under the system interpreter when ours is in a directory that uid cannot
    read. It tries to read the key, then connects and sends a request.
    """
    script = r"""
import json, socket, struct, sys
path = sys.argv[1]
out = {}
try:
    open(path + ".key").read()
    out["key"] = "read"
except OSError as exc:
    out["key"] = type(exc).__name__
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(path)
except OSError as exc:
    out["connect"] = type(exc).__name__
    print(json.dumps(out)); sys.exit(0)
out["connect"] = "ok"
body = json.dumps({"key": "guess", "op": "echo", "args": {}}).encode()
try:
    s.sendall(struct.pack(">I", len(body)) + body)
except OSError:
    pass
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break  # the server closed before reading our request: its reply came first
    if not chunk:
        break
    data += chunk
out["reply"] = json.loads(data[4:]) if len(data) > 4 else None
print(json.dumps(out))
"""
    for exe in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            proc = subprocess.run(
                [exe, "-I", "-c", script, sock_path],
                user=65534,
                group=65534,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        except (PermissionError, FileNotFoundError):
            continue  # this interpreter is not reachable for uid 65534; try the next
        return json.loads(proc.stdout)
    pytest.skip("no Python interpreter that uid 65534 can execute")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_peer_credentials_other_uid_rejected(serve: Callable[..., ControlServer], sock_path: str) -> None:
    calls: list[str] = []

    def handler(op: str, args: dict) -> object:
        calls.append(op)
        return "ran"

    serve(sock_path, handler)

    # As installed: the other uid cannot even enter the 0700 directory.
    seen = _other_uid_client(sock_path)
    assert seen["key"] == "PermissionError"
    assert seen["connect"] == "PermissionError"

    # Even with the file-system guards opened up (a misconfiguration), SO_PEERCRED refuses it.
    os.chmod(os.path.dirname(os.path.dirname(sock_path)), 0o755)
    os.chmod(os.path.dirname(sock_path), 0o755)
    os.chmod(sock_path, 0o666)
    seen = _other_uid_client(sock_path)
    assert seen["key"] == "PermissionError"  # the key file stays 0600
    assert seen["connect"] == "ok"
    assert seen["reply"]["ok"] is False
    assert seen["reply"]["error"]["type"] == "AccessDenied"
    assert "uid 65534" in seen["reply"]["error"]["message"]
    assert calls == []
    assert request("echo", {"me": "root"}, socket_path=sock_path) == "ran"


# ------------------------------------------------------------------ robustness

_BAD_INPUTS = {
    "invalid JSON": struct.pack(">I", 9) + b"{not json",
    "oversize length prefix": struct.pack(">I", MAX_MESSAGE + 1),
    "huge length prefix": b"\xff\xff\xff\xff",
    "garbage bytes (an HTTP request)": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "invalid UTF-8": struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc",
    "JSON array, not object": _frame([1, 2, 3]),
    "NaN is not JSON": struct.pack(">I", 10) + b'{"key":NaN',
    "empty message": struct.pack(">I", 0),
    "deeply nested JSON": struct.pack(">I", 200000) + b"[" * 200000,
}


@pytest.mark.parametrize("payload", list(_BAD_INPUTS.values()), ids=list(_BAD_INPUTS))
def test_malformed_input_rejected_while_good_client_succeeds(
    serve: Callable[..., ControlServer], sock_path: str, payload: bytes
) -> None:
    calls: list[str] = []

    def handler(op: str, args: dict) -> object:
        calls.append(op)
        return args

    serve(sock_path, handler)
    with _raw(sock_path) as bad:
        bad.sendall(payload)
        # while the bad connection is open, a good client is served normally
        assert request("echo", {"good": 1}, socket_path=sock_path) == {"good": 1}
        reply = _read_reply(bad)
    assert reply["ok"] is False
    assert reply["error"]["type"] == "ProtocolError"
    assert reply["error"]["exit_code"] == ProtocolError.exit_code
    assert calls == ["echo"]
    assert request("echo", {"after": 2}, socket_path=sock_path) == {"after": 2}


def test_bad_request_fields_rejected(serve: Callable[..., ControlServer], sock_path: str) -> None:
    server = serve(sock_path)
    key = _key(server)
    for req in (
        {"key": key},
        {"key": key, "op": ""},
        {"key": key, "op": 7},
        {"key": key, "op": "echo", "args": []},
    ):
        with _raw(sock_path) as sock:
            sock.sendall(_frame(req))
            reply = _read_reply(sock)
        assert reply["error"]["type"] == "ProtocolError", req


def test_truncated_message_then_close(serve: Callable[..., ControlServer], sock_path: str) -> None:
    serve(sock_path)
    with _raw(sock_path) as sock:
        sock.sendall(struct.pack(">I", 100) + b'{"key": "')
        sock.shutdown(socket.SHUT_WR)
        reply = _read_reply(sock)
    assert reply["error"]["type"] == "ProtocolError"
    assert request("echo", {"ok": True}, socket_path=sock_path) == {"ok": True}


def test_slow_clients_do_not_block_others(serve: Callable[..., ControlServer], sock_path: str) -> None:
    serve(sock_path)  # default 10 s read timeout: the silent clients stay connected throughout
    silent = [_raw(sock_path) for _ in range(5)]
    half = _raw(sock_path)
    half.sendall(b"\x00\x00")  # half a length prefix
    try:
        start = time.monotonic()
        for i in range(5):
            assert request("echo", {"i": i}, socket_path=sock_path, timeout=5) == {"i": i}
        assert time.monotonic() - start < 3
    finally:
        for sock in [*silent, half]:
            sock.close()


def test_silent_client_is_cut_off_after_read_timeout(
    serve: Callable[..., ControlServer], sock_path: str
) -> None:
    serve(sock_path, read_timeout=0.5)
    with _raw(sock_path) as sock:
        start = time.monotonic()
        reply = _read_reply(sock)
        elapsed = time.monotonic() - start
    assert reply["error"]["type"] == "ProtocolError"
    assert "timed out" in reply["error"]["message"]
    assert 0.3 < elapsed < 4


def test_trickling_client_is_cut_off_at_the_deadline(
    serve: Callable[..., ControlServer], sock_path: str
) -> None:
    """One byte every 0.1 s would reset a per-recv timeout forever; the deadline is per request."""
    serve(sock_path, read_timeout=0.6)
    body = b"x" * 1000
    with _raw(sock_path) as sock:
        start = time.monotonic()
        sock.sendall(struct.pack(">I", len(body)))
        with contextlib.suppress(OSError):
            for byte in body:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
                if time.monotonic() - start > 5:
                    break
        elapsed = time.monotonic() - start
        reply = _read_reply(sock)
    assert reply["error"]["type"] == "ProtocolError"
    assert elapsed < 4, "the server kept reading from a client that trickles bytes"


def test_fifty_concurrent_clients(serve: Callable[..., ControlServer], sock_path: str) -> None:
    """All 50 requests must be in the handler at the same time, or the barrier breaks."""
    barrier = threading.Barrier(50, timeout=20)

    def handler(op: str, args: dict) -> object:
        barrier.wait()
        return {"echo": args["n"]}

    serve(sock_path, handler)
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda n: request("meet", {"n": n}, socket_path=sock_path), range(50)))
    assert results == [{"echo": n} for n in range(50)]


def test_connection_limit(serve: Callable[..., ControlServer], sock_path: str) -> None:
    serve(sock_path, max_connections=2)
    holders = [_raw(sock_path), _raw(sock_path)]
    try:
        deadline = time.monotonic() + 5
        while True:  # the accept loop takes the slots asynchronously
            try:
                request("echo", socket_path=sock_path)
            except ServerBusy as exc:
                assert "retry" in str(exc)
                break
            assert time.monotonic() < deadline, "a third connection was served beyond the limit"
            time.sleep(0.05)
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # once the holders are gone the slots come back
        try:
            assert request("echo", {"back": 1}, socket_path=sock_path) == {"back": 1}
            break
        except ServerBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)


# ------------------------------------------------------------------ lifecycle


def test_close_removes_files_and_restart_works(sock_path: str) -> None:
    server = ControlServer(sock_path, _handler)
    server.start()
    key_path = server.key_path
    server.close()
    server.close()  # idempotent
    assert not os.path.exists(sock_path)
    assert not os.path.exists(key_path)
    assert os.listdir(os.path.dirname(sock_path)) == []
    with pytest.raises(DaemonNotRunning):
        request("echo", socket_path=sock_path)
    with ControlServer(sock_path, _handler):
        assert request("echo", {"again": 1}, socket_path=sock_path) == {"again": 1}
    assert not os.path.exists(sock_path)


def test_stale_socket_is_replaced(serve: Callable[..., ControlServer], sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path), mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()
    Path(sock_path + ".key").write_text("stale key\n")
    os.chmod(sock_path + ".key", 0o600)
    Path(sock_path + ".lock").write_text("")  # left by a daemon killed with SIGKILL; not locked
    serve(sock_path)
    assert request("echo", {"fresh": True}, socket_path=sock_path) == {"fresh": True}


def test_second_server_on_live_socket_refused(serve: Callable[..., ControlServer], sock_path: str) -> None:
    first = serve(sock_path)
    second = ControlServer(sock_path, _handler)
    with pytest.raises(UsageError, match="another vspfs daemon is running") as info:
        second.start()
    assert "stop it first" in str(info.value)
    # the failed start took nothing away from the running server
    assert os.path.exists(sock_path)
    assert os.path.exists(first.key_path)
    assert request("echo", {"first": 1}, socket_path=sock_path) == {"first": 1}
    second.close()
    assert request("echo", {"first": 2}, socket_path=sock_path) == {"first": 2}


def test_foreign_listener_on_socket_refused(sock_path: str) -> None:
    """Something else answers on the path (no vspfs lock): refuse and leave it alone."""
    os.makedirs(os.path.dirname(sock_path), mode=0o700)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(sock_path)
    other.listen(1)
    try:
        with pytest.raises(UsageError, match="another vspfs daemon is running"):
            ControlServer(sock_path, _handler).start()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        other.close()


def test_non_socket_file_at_path_refused(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path), mode=0o700)
    Path(sock_path).write_text("precious")
    with pytest.raises(UsageError, match="not a socket"):
        ControlServer(sock_path, _handler).start()
    assert Path(sock_path).read_text() == "precious"


def test_socket_path_too_long_is_a_usage_error(tmp_path: Path) -> None:
    path = str(tmp_path / ("d" * 120) / "s.sock")
    with pytest.raises(UsageError, match="VSPFS_SOCKET"):
        ControlServer(path, _handler).start()


def test_unusable_socket_location_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot set up the control socket"):
        ControlServer(str(blocker / "ctl" / "s.sock"), _handler).start()
