"""The control channel's named pipe on Windows: the few Win32 calls, through ctypes.

Imported only on Windows, by ``vspfs.control`` (which chooses the transport
by the channel's name: a ``\\\\.\\pipe\\...`` name means this module). Every
decision that can be pure lives elsewhere and is unit-tested on Linux: the
flags of each call (``winplatform.pipe_create_args``, ``PIPE_CLIENT_FLAGS``),
the descriptors (``winplatform.pipe_sddl``, ``key_file_sddl``), the
checks (``winplatform.pipe_peer_allowed``, ``check_owner_only``), the
framing and size limits (``vspfs.control``). What is left here is the
plumbing: handles, OVERLAPPED structures, error codes. Each signature below
was checked against Microsoft's documentation (docs/windows.md, "The control
pipe") and has never run on Windows here (docs/windows.md, "Untested").

Why overlapped I/O: a synchronous ReadFile on a pipe has no timeout, and the
server must cut off a client that sends nothing (READ_TIMEOUT), stop waiting
for clients when the daemon stops, and let ``close()`` wake a thread blocked
in a read. Every operation therefore starts overlapped and waits on two
events: its own and the connection's "cancel" event.

The objects mirror what ``vspfs.control`` uses of a socket, so the framing
code is shared: :class:`PipeConnection` has ``recv``, ``sendall``,
``settimeout``, ``shutdown``, ``close``, and :class:`PipeListener` has
``accept`` and ``close``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from ctypes import wintypes
from typing import Any

from vspfs import portable_io
from vspfs import winplatform as wp
from vspfs.errors import UsageError

if not wp.running_on_windows():  # pragma: no cover - the module is for Windows only
    raise ImportError("vspfs.winpipe needs Windows")

_kernel32: Any = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
_advapi32: Any = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]

INVALID_HANDLE_VALUE = wintypes.HANDLE(-1).value
INFINITE = 0xFFFFFFFF
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102
SDDL_REVISION_1 = 1
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1  # TOKEN_INFORMATION_CLASS.TokenUser


#: minwinbase.h OVERLAPPED, the cache file layer's class
OVERLAPPED = portable_io.overlapped_type()


class SECURITY_ATTRIBUTES(ctypes.Structure):
    """minwinbase.h SECURITY_ATTRIBUTES."""

    _fields_ = [
        ("nLength", wintypes.DWORD),
        ("lpSecurityDescriptor", ctypes.c_void_p),
        ("bInheritHandle", wintypes.BOOL),
    ]


def _sig(fn: Any, restype: Any, *argtypes: Any) -> None:
    fn.restype = restype
    fn.argtypes = list(argtypes)


_LP = ctypes.POINTER
_sig(_kernel32.CreateNamedPipeW, wintypes.HANDLE, wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD,
     wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, _LP(SECURITY_ATTRIBUTES))  # fmt: skip
_sig(_kernel32.ConnectNamedPipe, wintypes.BOOL, wintypes.HANDLE, _LP(OVERLAPPED))
_sig(_kernel32.DisconnectNamedPipe, wintypes.BOOL, wintypes.HANDLE)
_sig(_kernel32.CreateFileW, wintypes.HANDLE, wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD,
     _LP(SECURITY_ATTRIBUTES), wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE)  # fmt: skip
_sig(_kernel32.WaitNamedPipeW, wintypes.BOOL, wintypes.LPCWSTR, wintypes.DWORD)
_sig(_kernel32.ReadFile, wintypes.BOOL, wintypes.HANDLE, wintypes.LPVOID, wintypes.DWORD,
     _LP(wintypes.DWORD), _LP(OVERLAPPED))  # fmt: skip
_sig(_kernel32.WriteFile, wintypes.BOOL, wintypes.HANDLE, wintypes.LPCVOID, wintypes.DWORD,
     _LP(wintypes.DWORD), _LP(OVERLAPPED))  # fmt: skip
_sig(_kernel32.GetOverlappedResult, wintypes.BOOL, wintypes.HANDLE, _LP(OVERLAPPED),
     _LP(wintypes.DWORD), wintypes.BOOL)  # fmt: skip
_sig(_kernel32.CancelIoEx, wintypes.BOOL, wintypes.HANDLE, _LP(OVERLAPPED))
_sig(_kernel32.PeekNamedPipe, wintypes.BOOL, wintypes.HANDLE, wintypes.LPVOID, wintypes.DWORD,
     _LP(wintypes.DWORD), _LP(wintypes.DWORD), _LP(wintypes.DWORD))  # fmt: skip
_sig(_kernel32.CreateEventW, wintypes.HANDLE, _LP(SECURITY_ATTRIBUTES), wintypes.BOOL, wintypes.BOOL,
     wintypes.LPCWSTR)  # fmt: skip
_sig(_kernel32.SetEvent, wintypes.BOOL, wintypes.HANDLE)
_sig(_kernel32.ResetEvent, wintypes.BOOL, wintypes.HANDLE)
_sig(_kernel32.WaitForMultipleObjects, wintypes.DWORD, wintypes.DWORD, _LP(wintypes.HANDLE), wintypes.BOOL,
     wintypes.DWORD)  # fmt: skip
_sig(_kernel32.CloseHandle, wintypes.BOOL, wintypes.HANDLE)
_sig(_kernel32.FlushFileBuffers, wintypes.BOOL, wintypes.HANDLE)
_sig(_kernel32.GetNamedPipeClientProcessId, wintypes.BOOL, wintypes.HANDLE, _LP(wintypes.ULONG))
_sig(_kernel32.GetNamedPipeServerProcessId, wintypes.BOOL, wintypes.HANDLE, _LP(wintypes.ULONG))
_sig(_kernel32.OpenProcess, wintypes.HANDLE, wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
_sig(_kernel32.LocalFree, wintypes.HLOCAL, wintypes.HLOCAL)
_sig(_advapi32.OpenProcessToken, wintypes.BOOL, wintypes.HANDLE, wintypes.DWORD, _LP(wintypes.HANDLE))
_sig(_advapi32.GetTokenInformation, wintypes.BOOL, wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
     wintypes.DWORD, _LP(wintypes.DWORD))  # fmt: skip
_sig(_advapi32.ConvertSidToStringSidW, wintypes.BOOL, ctypes.c_void_p, _LP(wintypes.LPWSTR))
_sig(_advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW, wintypes.BOOL, wintypes.LPCWSTR,
     wintypes.DWORD, _LP(ctypes.c_void_p), _LP(wintypes.ULONG))  # fmt: skip
_sig(_advapi32.GetKernelObjectSecurity, wintypes.BOOL, wintypes.HANDLE, wintypes.DWORD, ctypes.c_void_p,
     wintypes.DWORD, _LP(wintypes.DWORD))  # fmt: skip


def _error(what: str, code: int | None = None) -> OSError:
    """An OSError carrying the Win32 error (Python derives errno and the subclass from it)."""
    code = ctypes.get_last_error() if code is None else code
    exc = ctypes.WinError(code)  # type: ignore[attr-defined]
    exc.strerror = f"{what}: {exc.strerror}"
    return exc


class _Descriptor:
    """A self-relative security descriptor made from SDDL, freed with LocalFree."""

    def __init__(self, sddl: str) -> None:
        self.pointer = ctypes.c_void_p()
        if not _advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl, SDDL_REVISION_1, ctypes.byref(self.pointer), None
        ):
            raise _error("ConvertStringSecurityDescriptorToSecurityDescriptorW")
        self.attributes = SECURITY_ATTRIBUTES(ctypes.sizeof(SECURITY_ATTRIBUTES), self.pointer, False)

    def close(self) -> None:
        if self.pointer:
            _kernel32.LocalFree(self.pointer)
            self.pointer = ctypes.c_void_p()


def _event() -> int:
    handle = _kernel32.CreateEventW(None, True, False, None)  # manual reset, as ConnectNamedPipe asks
    if not handle:
        raise _error("CreateEventW")
    return handle


def handle_security(handle: int) -> bytes:
    """The owner, group and DACL of a kernel object (pipe, file), self-relative bytes."""
    info = wp.OWNER_SECURITY_INFORMATION | wp.GROUP_SECURITY_INFORMATION | wp.DACL_SECURITY_INFORMATION
    needed = wintypes.DWORD(0)
    _advapi32.GetKernelObjectSecurity(handle, info, None, 0, ctypes.byref(needed))
    if not needed.value:
        raise _error("GetKernelObjectSecurity")
    buf = ctypes.create_string_buffer(needed.value)
    if not _advapi32.GetKernelObjectSecurity(handle, info, buf, needed, ctypes.byref(needed)):
        raise _error("GetKernelObjectSecurity")
    return buf.raw[: needed.value]


def process_user_sid(pid: int) -> str | None:
    """The user SID of process ``pid``, or None when it cannot be read (gone, protected)."""
    process = _kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not process:
        return None
    token = wintypes.HANDLE()
    try:
        if not _advapi32.OpenProcessToken(process, TOKEN_QUERY, ctypes.byref(token)):
            return None
        try:
            size = wintypes.DWORD(0)
            _advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            if not size.value:
                return None
            buf = ctypes.create_string_buffer(size.value)
            if not _advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, buf, size, ctypes.byref(size)):
                return None
            psid = ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0]  # TOKEN_USER.User.Sid
            text = wintypes.LPWSTR()
            if not _advapi32.ConvertSidToStringSidW(psid, ctypes.byref(text)):
                return None
            try:
                return str(text.value)
            finally:
                _kernel32.LocalFree(ctypes.cast(text, ctypes.c_void_p))
        finally:
            _kernel32.CloseHandle(token)
    finally:
        _kernel32.CloseHandle(process)


class PipeConnection:
    """One end of a connected pipe instance, used like a blocking socket with a timeout."""

    def __init__(self, handle: int, *, server: bool) -> None:
        self.handle = handle
        self.server = server
        self._timeout: float | None = None
        self._cancel = _event()
        self._io_event = _event()
        self._lock = threading.Lock()
        self._closed = False

    # -- the socket-like surface vspfs.control uses

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" once the other end closed (ERROR_BROKEN_PIPE)."""
        buf = ctypes.create_string_buffer(n)
        try:
            got = self._io(lambda ov: _kernel32.ReadFile(self.handle, buf, n, None, ov), "ReadFile")
        except OSError as exc:
            if getattr(exc, "winerror", None) in wp.PIPE_GONE_ERRORS:
                return b""
            raise
        return buf.raw[:got]

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            chunk = bytes(view[: wp.PIPE_BUFFER_SIZE])
            write = functools.partial(_kernel32.WriteFile, self.handle, chunk, len(chunk), None)
            sent = self._io(write, "WriteFile")
            if sent <= 0:
                raise BrokenPipeError("the other end of the control pipe stopped reading")
            view = view[sent:]

    def shutdown(self, how: int = 2) -> None:
        """Cancel whatever this connection waits for (close() of an idle server connection)."""
        _kernel32.SetEvent(self._cancel)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _kernel32.SetEvent(self._cancel)
        # Only CloseHandle: a server end that is closed leaves unread data readable by
        # the client (the pipe's "closing" state, MS-FSCC 2.3.46), whereas
        # DisconnectNamedPipe would discard the reply, and FlushFileBuffers would wait
        # for a client that may never read. Instances are never reused once connected.
        _kernel32.CloseHandle(self.handle)
        _kernel32.CloseHandle(self._cancel)
        _kernel32.CloseHandle(self._io_event)

    def fileno(self) -> int:
        return int(self.handle)

    # -- pipe specifics

    def peer_sid(self) -> str | None:
        """The user SID of the process at the other end (None if it cannot be read)."""
        pid = wintypes.ULONG(0)
        call = _kernel32.GetNamedPipeClientProcessId if self.server else _kernel32.GetNamedPipeServerProcessId
        if not call(self.handle, ctypes.byref(pid)):
            return None
        return process_user_sid(pid.value)

    def security(self) -> bytes:
        """The pipe's security descriptor (owner, group, DACL), for check_owner_only."""
        return handle_security(self.handle)

    def peer_gone(self) -> bool:
        """True once the other end closed: PeekNamedPipe then fails with ERROR_BROKEN_PIPE."""
        avail = wintypes.DWORD(0)
        if _kernel32.PeekNamedPipe(self.handle, None, 0, None, ctypes.byref(avail), None):
            return False
        return ctypes.get_last_error() in wp.PIPE_GONE_ERRORS

    # -- overlapped plumbing

    def _io(self, start: Any, what: str) -> int:
        """Run one overlapped ReadFile/WriteFile to completion, timeout or cancel.

        The byte count comes from GetOverlappedResult only: for an
        asynchronous call ReadFile's and WriteFile's own count must be NULL
        ("to avoid potentially erroneous results", their documentation says).
        """
        ov = OVERLAPPED()
        _kernel32.ResetEvent(self._io_event)
        ov.hEvent = self._io_event
        count = wintypes.DWORD(0)
        if not start(ctypes.byref(ov)):
            code = ctypes.get_last_error()
            if code != wp.ERROR_IO_PENDING:
                raise _error(what, code)
            self._wait(ov, what)
        if not _kernel32.GetOverlappedResult(self.handle, ctypes.byref(ov), ctypes.byref(count), True):
            raise _error(what)
        return int(count.value)

    def _wait(self, ov: OVERLAPPED, what: str) -> None:
        ms = INFINITE if self._timeout is None else max(0, int(self._timeout * 1000))
        events = (wintypes.HANDLE * 2)(self._io_event, self._cancel)
        result = _kernel32.WaitForMultipleObjects(2, events, False, ms)
        if result == WAIT_OBJECT_0:
            return
        _kernel32.CancelIoEx(self.handle, ctypes.byref(ov))
        done = wintypes.DWORD(0)
        _kernel32.GetOverlappedResult(self.handle, ctypes.byref(ov), ctypes.byref(done), True)
        if result == WAIT_TIMEOUT:
            raise TimeoutError(f"{what} timed out")
        raise _error(what, wp.ERROR_OPERATION_ABORTED)


class PipeListener:
    """The server side: pipe instances created with the owner-only descriptor, one per client.

    The first instance carries FILE_FLAG_FIRST_PIPE_INSTANCE, so a second
    daemon (or anyone who made the name first) fails with ERROR_ACCESS_DENIED
    instead of sharing the name. A new instance is created before a connected
    one is handed over, so the name never disappears while the daemon runs.
    """

    def __init__(self, name: str, owner_sid: str) -> None:
        self.name = name
        self._descriptor = _Descriptor(wp.pipe_sddl(owner_sid))
        self._stop = _event()
        self._connect_event = _event()
        self._closed = False
        self._pending: int | None = None
        try:
            self._pending = self._instance(first=True)
        except BaseException:
            self._descriptor.close()
            raise

    def _instance(self, *, first: bool) -> int:
        a = wp.pipe_create_args(self.name, first=first)
        handle = _kernel32.CreateNamedPipeW(
            a.name,
            a.open_mode,
            a.pipe_mode,
            a.max_instances,
            a.out_buffer,
            a.in_buffer,
            a.default_timeout_ms,
            ctypes.byref(self._descriptor.attributes),
        )
        if handle == INVALID_HANDLE_VALUE or not handle:
            code = ctypes.get_last_error()
            if first and code == wp.ERROR_ACCESS_DENIED:
                raise UsageError(
                    f"another vspfs daemon (or another program) already listens on {self.name}: "
                    "stop it first (or set VSPFS_SOCKET to another pipe name)"
                )
            raise _error("CreateNamedPipeW", code)
        return handle

    def accept(self) -> PipeConnection | None:
        """Wait for the next client; None once :meth:`close` was called."""
        while not self._closed:
            if self._pending is None:  # the last attempt to make one failed: try again
                self._pending = self._instance(first=False)
            handle = self._pending
            ov = OVERLAPPED()
            _kernel32.ResetEvent(self._connect_event)
            ov.hEvent = self._connect_event
            if not _kernel32.ConnectNamedPipe(handle, ctypes.byref(ov)):
                code = ctypes.get_last_error()
                if code == wp.ERROR_IO_PENDING:
                    events = (wintypes.HANDLE * 2)(self._connect_event, self._stop)
                    if _kernel32.WaitForMultipleObjects(2, events, False, INFINITE) != WAIT_OBJECT_0:
                        _kernel32.CancelIoEx(handle, ctypes.byref(ov))
                        done = wintypes.DWORD(0)
                        _kernel32.GetOverlappedResult(handle, ctypes.byref(ov), ctypes.byref(done), True)
                        return None
                    done = wintypes.DWORD(0)
                    if not _kernel32.GetOverlappedResult(handle, ctypes.byref(ov), ctypes.byref(done), True):
                        _kernel32.DisconnectNamedPipe(handle)  # a client that left at once: reuse
                        continue
                elif code == wp.ERROR_NO_DATA:
                    _kernel32.DisconnectNamedPipe(handle)  # connected and already gone
                    continue
                elif code != wp.ERROR_PIPE_CONNECTED:
                    raise _error("ConnectNamedPipe", code)
            conn = PipeConnection(handle, server=True)
            self._pending = None
            try:
                self._pending = self._instance(first=False)
            except OSError:
                pass  # the next accept() tries again; this client is served meanwhile
            return conn
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _kernel32.SetEvent(self._stop)

    def release(self) -> None:
        """Free the listening instance and the descriptor (after the accept thread ended)."""
        self.close()
        if self._pending is not None:
            _kernel32.CloseHandle(self._pending)
            self._pending = None
        _kernel32.CloseHandle(self._stop)
        _kernel32.CloseHandle(self._connect_event)
        self._descriptor.close()


def connect(name: str, timeout: float | None) -> PipeConnection:
    """Open the client end of ``name``; FileNotFoundError when nobody serves it.

    A busy pipe (all instances connected: ERROR_PIPE_BUSY) is waited for
    with WaitNamedPipeW, within ``timeout``.
    """
    wait_ms = 5000 if timeout is None else max(1, int(timeout * 1000))
    for _ in range(10):
        handle = _kernel32.CreateFileW(
            name, wp.GENERIC_READ | wp.GENERIC_WRITE, 0, None, wp.OPEN_EXISTING, wp.PIPE_CLIENT_FLAGS, None
        )
        if handle != INVALID_HANDLE_VALUE and handle:
            return PipeConnection(handle, server=False)
        code = ctypes.get_last_error()
        if code != wp.ERROR_PIPE_BUSY:
            raise _error(f"CreateFileW {name}", code)
        # fails at once when no instance exists (CreateFileW then says so), with
        # ERROR_SEM_TIMEOUT when every instance stayed busy
        if not _kernel32.WaitNamedPipeW(name, wait_ms) and ctypes.get_last_error() == wp.ERROR_SEM_TIMEOUT:
            raise TimeoutError(f"{name} stayed busy")
    raise TimeoutError(f"{name} stayed busy")


def write_private_file(path: str, data: bytes, owner_sid: str) -> None:
    """Create ``path`` (it must not exist) with an owner-only DACL from the start, and write it.

    The descriptor is given to CreateFileW itself: a file created first and
    restricted afterwards would be readable through inherited ACEs for a moment.
    """
    descriptor = _Descriptor(wp.key_file_sddl(owner_sid))
    try:
        handle = _kernel32.CreateFileW(
            path,
            wp.GENERIC_WRITE,
            0,
            ctypes.byref(descriptor.attributes),
            wp.CREATE_NEW,
            wp.FILE_ATTRIBUTE_NORMAL,
            None,
        )
        if handle == INVALID_HANDLE_VALUE or not handle:
            raise _error(f"CreateFileW {path}")
    finally:
        descriptor.close()
    try:
        written = wintypes.DWORD(0)
        if not _kernel32.WriteFile(handle, data, len(data), ctypes.byref(written), None):
            raise _error(f"WriteFile {path}")
        if written.value != len(data):
            raise OSError(f"short write to {path}")
        _kernel32.FlushFileBuffers(handle)
    finally:
        _kernel32.CloseHandle(handle)


def read_private_file(path: str, limit: int = 4096) -> tuple[bytes, bytes]:
    """(contents, security descriptor) of a key file, read through one open handle."""
    import msvcrt

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0))
    try:
        sd = handle_security(msvcrt.get_osfhandle(fd))  # type: ignore[attr-defined]
        return os.read(fd, limit), sd
    finally:
        os.close(fd)
