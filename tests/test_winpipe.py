"""The control channel over a Windows named pipe, tested on Linux.

Two layers: the pure decisions the pipe transport is made of (flags of each
Win32 call, descriptors, the peer check, the key file's place), and the
whole pipe branch of ``vspfs.control`` (server and client) driven through a
fake of ``vspfs.winpipe`` built on socket pairs: the same surface
(PipeListener, connect, write_private_file, read_private_file, and
connections with peer_sid/security/peer_gone), so framing, limits, keys,
identity checks and error replies run exactly as on Windows. The ctypes
module itself cannot run here; docs/windows.md lists it as untested.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vspfs import control
from vspfs import winplatform as wp
from vspfs.control import AccessDenied, ControlServer, ProtocolError, request
from vspfs.errors import DaemonNotRunning, UsageError

OWNER = "S-1-5-21-1004336348-1177238915-682003330-1001"
OTHER = "S-1-5-21-1004336348-1177238915-682003330-1002"
PIPE = "\\\\.\\pipe\\vspfs-test"


# ---------------------------------------------------------------- pure parts


def test_create_args_of_first_and_later_instances() -> None:
    first = wp.pipe_create_args(PIPE, first=True)
    later = wp.pipe_create_args(PIPE, first=False)
    # PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE
    assert first.open_mode == 0x00000003 | 0x40000000 | 0x00080000
    assert later.open_mode == 0x00000003 | 0x40000000  # later instances must not ask to be first
    # PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT (all 0) | PIPE_REJECT_REMOTE_CLIENTS
    assert first.pipe_mode == later.pipe_mode == 0x00000008
    assert first.max_instances == 255  # PIPE_UNLIMITED_INSTANCES
    assert first.in_buffer == first.out_buffer == wp.PIPE_BUFFER_SIZE
    assert first.name == PIPE
    with pytest.raises(UsageError):
        wp.pipe_create_args("/run/vspfs.sock", first=True)


def test_client_open_flags() -> None:
    # FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION
    assert wp.PIPE_CLIENT_FLAGS == 0x40000000 | 0x00100000 | 0x00010000
    assert wp.OPEN_EXISTING == 3 and wp.CREATE_NEW == 1


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (OWNER, True),
        (OWNER.lower(), True),
        ("S-1-5-18", True),  # LocalSystem, as root may use a Unix socket
        (OTHER, False),
        ("S-1-5-32-544", False),  # Administrators: not by group, only by user
        ("S-1-1-0", False),
        (None, False),  # identity unreadable: fail closed
        ("", False),
    ],
)
def test_peer_decision(peer: str | None, allowed: bool) -> None:
    assert wp.pipe_peer_allowed(peer, OWNER) is allowed


def test_key_file_descriptor_is_owner_only() -> None:
    sddl = wp.key_file_sddl(OWNER)
    assert sddl == f"O:{OWNER}G:{OWNER}D:P(A;;FA;;;{OWNER})(A;;FA;;;SY)"
    wp.check_owner_only(wp.sddl_to_bytes(sddl), OWNER)
    with pytest.raises(UsageError):
        wp.check_owner_only(wp.sddl_to_bytes(sddl), OTHER)
    readable = f"O:{OWNER}G:{OWNER}D:(A;;FA;;;{OWNER})(A;;FR;;;BU)"
    with pytest.raises(UsageError, match="also admits"):
        wp.check_owner_only(wp.sddl_to_bytes(readable), OWNER)


def test_pipe_descriptor_passes_the_clients_check() -> None:
    wp.check_owner_only(wp.sddl_to_bytes(wp.pipe_sddl(OWNER)), OWNER)


def test_key_file_place() -> None:
    assert wp.pipe_key_path("\\\\.\\pipe\\vspfs-bob", "C:\\Users\\bob\\AppData\\Local\\vspfs") == (
        "C:\\Users\\bob\\AppData\\Local\\vspfs\\vspfs-bob.key"
    )
    assert wp.pipe_key_path("//./pipe/a\\..\\b", "K:\\k") == "K:\\k\\a_.._b.key"
    assert wp.pipe_key_path("\\\\.\\pipe\\...", "K:\\k") == "K:\\k\\pipe.key"
    with pytest.raises(UsageError):
        wp.pipe_key_path("/tmp/x.sock", "K:\\k")
    assert wp.default_key_dir({"LOCALAPPDATA": "C:\\L"}) == "C:\\L\\vspfs"
    assert wp.default_key_dir({"USERPROFILE": "C:\\Users\\bob"}) == "C:\\Users\\bob\\AppData\\Local\\vspfs"


def test_default_channel_on_windows_is_the_users_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSPFS_SOCKET", raising=False)
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    monkeypatch.setattr(control.getpass, "getuser", lambda: "bob smith")
    assert control.default_socket_path() == "\\\\.\\pipe\\vspfs-bob_smith"
    monkeypatch.setattr(wp, "default_key_dir", lambda environ=None: "C:\\L\\vspfs")
    assert control.key_path_for("\\\\.\\pipe\\vspfs-bob_smith") == "C:\\L\\vspfs\\vspfs-bob_smith.key"
    assert control.key_path_for("/run/x.sock") == "/run/x.sock.key"
    assert control.normalize_channel(PIPE) == PIPE


def test_pipe_records_are_named_case_insensitively() -> None:
    from vspfs.daemon import socket_key

    assert socket_key(PIPE) == socket_key(PIPE.upper()) == socket_key(PIPE.replace("\\", "/"))
    assert socket_key(PIPE) != socket_key("\\\\.\\pipe\\vspfs-other")


def test_winpipe_is_not_importable_on_linux() -> None:
    with pytest.raises(ImportError, match="needs Windows"):
        import vspfs.winpipe  # noqa: F401


def test_pipe_names_on_linux_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="Windows named pipe"):
        ControlServer(PIPE, lambda op, args: None).start()
    with pytest.raises(UsageError, match="Windows named pipe"):
        request("ping", socket_path=PIPE)


def test_shared_and_exclusive_locks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a, b, c = (os.open(path, os.O_RDWR) for _ in range(3))
    try:
        assert wp.try_lock_shared(a)
        assert wp.try_lock_shared(b)  # two askers do not see each other
        assert not wp.try_lock_exclusive(c)
        wp.unlock(a)
        wp.unlock(b)
        assert wp.try_lock_exclusive(c)
        assert not wp.try_lock_shared(a)
    finally:
        for fd in (a, b, c):
            os.close(fd)


# ----------------------------------------------- the pipe branch, through a fake


class FakeConn:
    """One end of a fake pipe: a socket with a peer identity and a descriptor."""

    def __init__(self, sock: socket.socket, peer_sid: str | None, security: bytes) -> None:
        self.sock = sock
        self._peer = peer_sid
        self._security = security

    def recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except ConnectionResetError:
            return b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown(self, how: int = 2) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()

    def peer_sid(self) -> str | None:
        return self._peer

    def security(self) -> bytes:
        return self._security

    def peer_gone(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        return self.sock.recv(1, socket.MSG_PEEK) == b""


class FakeListener:
    def __init__(self, pipes: FakePipes, name: str) -> None:
        self.pipes = pipes
        self.name = name
        self.waiting: queue.Queue[FakeConn | None] = queue.Queue()
        self.closed = False

    def accept(self) -> FakeConn | None:
        conn = self.waiting.get()
        return None if self.closed else conn

    def close(self) -> None:
        self.closed = True
        self.waiting.put(None)

    def release(self) -> None:
        self.close()
        self.pipes.listeners.pop(self.name.lower(), None)


class FakePipes:
    """The surface of vspfs.winpipe that vspfs.control uses, over socket pairs."""

    def __init__(self) -> None:
        self.listeners: dict[str, FakeListener] = {}
        self.client_sid: str | None = OWNER  # who the server sees
        self.server_sid: str | None = OWNER  # who the client sees
        self.pipe_security = wp.sddl_to_bytes(wp.pipe_sddl(OWNER))
        self.key_security: dict[tuple[int, int], bytes] = {}
        self.key_override: bytes | None = None
        self.listen_sids: list[str] = []

    def PipeListener(self, name: str, owner_sid: str) -> FakeListener:
        if name.lower() in self.listeners:
            raise UsageError(f"another vspfs daemon (or another program) already listens on {name}")
        self.listen_sids.append(owner_sid)
        listener = self.listeners[name.lower()] = FakeListener(self, name)
        return listener

    def connect(self, name: str, timeout: float | None) -> FakeConn:
        listener = self.listeners.get(name.lower())
        if listener is None or listener.closed:
            raise FileNotFoundError(2, "The system cannot find the file specified", name)
        a, b = socket.socketpair()
        listener.waiting.put(FakeConn(b, self.client_sid, self.pipe_security))
        return FakeConn(a, self.server_sid, self.pipe_security)

    def write_private_file(self, path: str, data: bytes, owner_sid: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.key_security[(st.st_dev, st.st_ino)] = wp.sddl_to_bytes(wp.key_file_sddl(owner_sid))

    def read_private_file(self, path: str, limit: int = 4096) -> tuple[bytes, bytes]:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(limit)
        return data, self.key_override or self.key_security[(st.st_dev, st.st_ino)]


def _handler(op: str, args: dict) -> object:
    if op == "echo":
        return args
    if op == "usage":
        raise UsageError("bad drive letter Q:")
    if op == "wait_gone":
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if control.client_gone():
                _gone.append(True)
                return "gone"
            time.sleep(0.02)
        return "still there"
    raise UsageError(f"unknown operation {op!r}")


_gone: list[bool] = []


@pytest.fixture
def pipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePipes:
    """Make this Linux process take the Windows branches, with the fake transport."""
    fake = FakePipes()
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    monkeypatch.setattr(control, "_winpipe", lambda: fake)
    monkeypatch.setattr(control, "_current_sid", lambda: OWNER)
    monkeypatch.setattr(wp, "default_key_dir", lambda environ=None: str(tmp_path / "keys"))
    return fake


@pytest.fixture
def serve_pipe(pipes: FakePipes) -> Iterator[Callable[..., ControlServer]]:
    servers: list[ControlServer] = []

    def start(**kw: object) -> ControlServer:
        server = ControlServer(PIPE, _handler, **kw)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_round_trip_and_errors_over_the_pipe(
    pipes: FakePipes, serve_pipe: Callable[..., ControlServer]
) -> None:
    server = serve_pipe()
    assert server.socket_path == PIPE  # a pipe name is never made into a path
    assert pipes.listen_sids == [OWNER]
    assert request("echo", {"a": [1, "é"]}, socket_path=PIPE) == {"a": [1, "é"]}
    with pytest.raises(UsageError, match="bad drive letter Q:"):
        request("usage", socket_path=PIPE)
    key_path = control.key_path_for(PIPE)
    assert os.path.exists(key_path)
    server.close()
    assert not os.path.exists(key_path)  # the key goes with the daemon
    with pytest.raises(DaemonNotRunning):
        request("echo", socket_path=PIPE)


def test_second_daemon_on_the_same_pipe_is_refused(serve_pipe: Callable[..., ControlServer]) -> None:
    serve_pipe()
    with pytest.raises(UsageError, match="already listens"):
        serve_pipe()


def test_server_refuses_a_client_of_another_user(
    pipes: FakePipes, serve_pipe: Callable[..., ControlServer]
) -> None:
    serve_pipe()
    for sid in (OTHER, None):
        pipes.client_sid = sid
        with pytest.raises(AccessDenied, match="may not control"):
            request("echo", socket_path=PIPE)
    pipes.client_sid = "S-1-5-18"
    assert request("echo", {"x": 1}, socket_path=PIPE) == {"x": 1}


def test_client_refuses_a_server_of_another_user(
    pipes: FakePipes, serve_pipe: Callable[..., ControlServer]
) -> None:
    serve_pipe()
    pipes.server_sid = OTHER
    with pytest.raises(AccessDenied, match="not by you or SYSTEM"):
        request("echo", socket_path=PIPE)


def test_client_refuses_a_pipe_others_may_open(
    pipes: FakePipes, serve_pipe: Callable[..., ControlServer]
) -> None:
    serve_pipe()
    pipes.pipe_security = wp.sddl_to_bytes(f"O:{OWNER}D:P(A;;GA;;;{OWNER})(A;;GA;;;WD)")
    with pytest.raises(AccessDenied, match="also admits"):
        request("echo", socket_path=PIPE)
    pipes.pipe_security = wp.sddl_to_bytes(f"O:{OTHER}D:P(A;;GA;;;{OWNER})")
    with pytest.raises(AccessDenied, match="belongs to"):
        request("echo", socket_path=PIPE)


def test_client_refuses_a_key_file_others_may_read(
    pipes: FakePipes, serve_pipe: Callable[..., ControlServer]
) -> None:
    serve_pipe()
    pipes.key_override = wp.sddl_to_bytes(f"O:{OWNER}D:(A;;FA;;;{OWNER})(A;;FR;;;BU)")
    with pytest.raises(AccessDenied, match="not a private file"):
        request("echo", socket_path=PIPE)
    pipes.key_override = None
    os.unlink(control.key_path_for(PIPE))
    with pytest.raises(AccessDenied, match="missing"):
        request("echo", socket_path=PIPE)


def _raw(pipes: FakePipes) -> FakeConn:
    conn = pipes.connect(PIPE, 5.0)
    conn.settimeout(5.0)
    return conn


def test_framing_limits_over_the_pipe(pipes: FakePipes, serve_pipe: Callable[..., ControlServer]) -> None:
    serve_pipe(read_timeout=0.5)
    conn = _raw(pipes)
    conn.sendall(struct.pack(">I", control.MAX_MESSAGE + 1))
    reply = control._recv_message(conn, None)
    conn.close()
    assert reply is not None and reply["error"]["type"] == "ProtocolError"
    conn = _raw(pipes)  # says nothing: cut off at the read deadline
    reply = control._recv_message(conn, None)
    conn.close()
    assert reply is not None and "timed out" in reply["error"]["message"]


def test_long_request_notices_a_client_that_left(
    pipes: FakePipes, serve_pipe: Callable[..., ControlServer]
) -> None:
    serve_pipe()
    _gone.clear()
    with pytest.raises(ProtocolError, match="no reply"):
        request("wait_gone", socket_path=PIPE, timeout=0.3)
    deadline = time.monotonic() + 5
    while not _gone and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone == [True]


# ------------------------------------ vspfs.winpipe itself, over a fake Win32


class _FakeFunction:
    """One DLL export: records its declared signature and its calls."""

    def __init__(self, dll: _FakeDll, name: str) -> None:
        self.dll = dll
        self.name = name
        self.restype: object = None
        self.argtypes: object = None

    def __call__(self, *args: object) -> object:
        self.dll.calls.append((self.name, args))
        behaviour = self.dll.behaviour.get(self.name)
        if behaviour is None:
            return 1
        return behaviour(*args)


class _FakeDll:
    def __init__(self, name: str, **_: object) -> None:
        self.name = name
        self.functions: dict[str, _FakeFunction] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.behaviour: dict[str, Callable[..., object]] = {}

    def __getattr__(self, name: str) -> _FakeFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.functions.setdefault(name, _FakeFunction(self, name))


@pytest.fixture
def winpipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import vspfs.winpipe against fake kernel32/advapi32 (ctypes' Windows parts faked)."""
    import ctypes
    import importlib
    import sys

    dlls: dict[str, _FakeDll] = {}
    last_error = [0]

    def win_dll(name: str, **kw: object) -> _FakeDll:
        return dlls.setdefault(name, _FakeDll(name, **kw))

    def win_error(code: int | None = None) -> OSError:
        exc = OSError(None, f"Win32 error {code}", None, code)
        exc.winerror = code  # type: ignore[attr-defined]  # Linux OSError drops it
        return exc

    monkeypatch.setattr(ctypes, "WinDLL", win_dll, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: last_error[0], raising=False)
    monkeypatch.setattr(ctypes, "WinError", win_error, raising=False)
    monkeypatch.setattr(wp, "running_on_windows", lambda: True)
    sys.modules.pop("vspfs.winpipe", None)
    module = importlib.import_module("vspfs.winpipe")
    module.fake_dlls = dlls
    module.set_last_error = lambda code: last_error.__setitem__(0, code)
    try:
        yield module
    finally:
        sys.modules.pop("vspfs.winpipe", None)


def test_every_win32_function_has_a_declared_signature(winpipe: Any) -> None:
    kernel32 = winpipe.fake_dlls["kernel32"].functions
    advapi32 = winpipe.fake_dlls["advapi32"].functions
    for name, count in {
        "CreateNamedPipeW": 8,
        "ConnectNamedPipe": 2,
        "DisconnectNamedPipe": 1,
        "CreateFileW": 7,
        "WaitNamedPipeW": 2,
        "ReadFile": 5,
        "WriteFile": 5,
        "GetOverlappedResult": 4,
        "CancelIoEx": 2,
        "PeekNamedPipe": 6,
        "CreateEventW": 4,
        "WaitForMultipleObjects": 4,
        "GetNamedPipeClientProcessId": 2,
        "GetNamedPipeServerProcessId": 2,
        "OpenProcess": 3,
    }.items():
        assert len(kernel32[name].argtypes) == count, name  # type: ignore[arg-type]
    for name, count in {
        "OpenProcessToken": 3,
        "GetTokenInformation": 5,
        "ConvertSidToStringSidW": 2,
        "ConvertStringSecurityDescriptorToSecurityDescriptorW": 4,
        "GetKernelObjectSecurity": 5,
    }.items():
        assert len(advapi32[name].argtypes) == count, name  # type: ignore[arg-type]
    import ctypes
    from ctypes import wintypes

    # OVERLAPPED is Internal, InternalHigh (ULONG_PTR), Offset, OffsetHigh (DWORD), hEvent:
    # 32 bytes on 64-bit Windows, where DWORD (c_ulong) has 4 bytes (8 on Linux)
    pointer = ctypes.sizeof(ctypes.c_void_p)
    expected = 2 * ctypes.sizeof(ctypes.c_size_t) + 2 * ctypes.sizeof(wintypes.DWORD) + pointer
    assert ctypes.sizeof(winpipe.OVERLAPPED) == expected
    assert [f[0] for f in winpipe.OVERLAPPED._fields_] == [
        "Internal",
        "InternalHigh",
        "Offset",
        "OffsetHigh",
        "hEvent",
    ]


def test_listener_creates_the_first_instance_with_the_owner_only_descriptor(winpipe: Any) -> None:
    kernel32 = winpipe.fake_dlls["kernel32"]
    advapi32 = winpipe.fake_dlls["advapi32"]
    kernel32.behaviour["CreateNamedPipeW"] = lambda *a: 0x100
    kernel32.behaviour["CreateEventW"] = lambda *a: 0x200
    listener = winpipe.PipeListener(PIPE, OWNER)
    sddl_calls = [a for n, a in advapi32.calls if n == "ConvertStringSecurityDescriptorToSecurityDescriptorW"]
    assert sddl_calls[0][0] == wp.pipe_sddl(OWNER) and sddl_calls[0][1] == 1  # SDDL_REVISION_1
    (args,) = [a for n, a in kernel32.calls if n == "CreateNamedPipeW"]
    first = wp.pipe_create_args(PIPE, first=True)
    assert args[:7] == (PIPE, first.open_mode, first.pipe_mode, 255, 65536, 65536, 0)
    # the name is taken: ERROR_ACCESS_DENIED on a first instance is a usage error
    kernel32.behaviour["CreateNamedPipeW"] = lambda *a: winpipe.INVALID_HANDLE_VALUE
    winpipe.set_last_error(wp.ERROR_ACCESS_DENIED)
    with pytest.raises(UsageError, match="already listens"):
        winpipe.PipeListener(PIPE, OWNER)
    listener.release()


def _connection(winpipe: Any) -> Any:
    kernel32 = winpipe.fake_dlls["kernel32"]
    kernel32.behaviour["CreateEventW"] = lambda *a: 0x300
    return winpipe.PipeConnection(0x400, server=True)


def test_overlapped_read_takes_its_count_from_the_overlapped_result(winpipe: Any) -> None:
    kernel32 = winpipe.fake_dlls["kernel32"]
    conn = _connection(winpipe)

    def read_file(handle: int, buf: Any, n: int, count: object, ov: object) -> int:
        assert count is None  # asynchronous: the count comes from GetOverlappedResult
        buf.value = b"hello"
        winpipe.set_last_error(wp.ERROR_IO_PENDING)
        return 0

    def result(handle: int, ov: Any, count: Any, wait: bool) -> int:
        count._obj.value = 5
        return 1

    kernel32.behaviour["ReadFile"] = read_file
    kernel32.behaviour["WaitForMultipleObjects"] = lambda *a: 0  # WAIT_OBJECT_0: our I/O event
    kernel32.behaviour["GetOverlappedResult"] = result
    conn.settimeout(1.0)
    assert conn.recv(16) == b"hello"
    waits = [a for n, a in kernel32.calls if n == "WaitForMultipleObjects"]
    assert waits[-1][0] == 2 and waits[-1][3] == 1000  # two events, the timeout in ms

    kernel32.behaviour["ReadFile"] = lambda *a: (winpipe.set_last_error(wp.ERROR_BROKEN_PIPE), 0)[1]
    assert conn.recv(16) == b""  # the client closed: end of stream


def test_overlapped_read_times_out_and_cancels(winpipe: Any) -> None:
    kernel32 = winpipe.fake_dlls["kernel32"]
    conn = _connection(winpipe)
    kernel32.behaviour["ReadFile"] = lambda *a: (winpipe.set_last_error(wp.ERROR_IO_PENDING), 0)[1]
    kernel32.behaviour["WaitForMultipleObjects"] = lambda *a: winpipe.WAIT_TIMEOUT
    conn.settimeout(0.25)
    with pytest.raises(TimeoutError):
        conn.recv(4)
    names = [n for n, _ in kernel32.calls]
    assert names.index("CancelIoEx") < len(names) - 1 - names[::-1].index("GetOverlappedResult")
    conn.close()
    assert ("DisconnectNamedPipe", (0x400,)) not in kernel32.calls  # the reply must stay readable


def test_accept_hands_over_a_connected_instance_after_making_the_next(winpipe: Any) -> None:
    kernel32 = winpipe.fake_dlls["kernel32"]
    handles = iter(range(0x100, 0x200))
    kernel32.behaviour["CreateNamedPipeW"] = lambda *a: next(handles)
    kernel32.behaviour["CreateEventW"] = lambda *a: 0x900

    # a client connected between CreateNamedPipeW and ConnectNamedPipe: a good connection
    def connected(*args: object) -> int:
        winpipe.set_last_error(wp.ERROR_PIPE_CONNECTED)
        return 0

    kernel32.behaviour["ConnectNamedPipe"] = connected
    listener = winpipe.PipeListener(PIPE, OWNER)
    conn = listener.accept()
    assert conn is not None and conn.handle == 0x100 and conn.server
    creates = [a for n, a in kernel32.calls if n == "CreateNamedPipeW"]
    assert [c[1] for c in creates] == [
        wp.pipe_create_args(PIPE, first=True).open_mode,
        wp.pipe_create_args(PIPE, first=False).open_mode,  # later instances never ask to be first
    ]
    listener.close()
    assert listener.accept() is None
    listener.release()
    closed = [a[0] for n, a in kernel32.calls if n == "CloseHandle"]
    assert 0x101 in closed and 0x100 not in closed  # the pending instance goes; the client's stays
