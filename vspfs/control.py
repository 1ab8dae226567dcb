"""Local control channel between the ``vspfs`` CLI and the daemon.

The daemon owns all copy-on-write state, so every CLI command is a request to
it. The channel is a Unix stream socket that only the daemon's owner (or root)
can use, guarded three ways because any one of them can be misconfigured:

* the socket lives in a 0700 directory and is itself 0600;
* the server checks the peer's uid with ``SO_PEERCRED`` (daemon uid or root);
* every request carries a random key that the daemon writes to
  ``<socket>.key`` (0600), compared in constant time.

The client checks the daemon in turn: the socket must be served by the
client's own uid or by root, so a socket planted by another user cannot
collect keys or feed back fake answers.

Wire format: each message is a 4-byte big-endian length followed by that many
bytes of UTF-8 JSON encoding one object, at most :data:`MAX_MESSAGE` bytes.
Requests are ``{"key": ..., "op": ..., "args": {...}}``; replies are
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type": ...,
"message": ..., "exit_code": ...}}``. JSON, never pickle: a reply or request
must never be able to run code in the other process.

One request per connection: connections are cheap locally, and it keeps the
server free of per-connection state beyond one read.

Transports: the channel's name chooses one. A path is a Unix socket (the
checks above); a local pipe name (``\\\\.\\pipe\\vspfs-<user>``, the default on
Windows) is a Windows named pipe, served by :mod:`vspfs.winpipe` (imported
only then), with the same framing, limits, key and error replies. Its
guards are the pipe's owner-only descriptor (``winplatform.pipe_sddl``,
made with FILE_FLAG_FIRST_PIPE_INSTANCE and PIPE_REJECT_REMOTE_CLIENTS),
the client process's user SID checked against the daemon's
(``winplatform.pipe_peer_allowed``), and the key in a file whose DACL
admits only the owner (``winplatform.key_file_sddl``). The client checks the
pipe's descriptor (``winplatform.check_owner_only``) and the server
process's user before it sends the key. docs/windows.md has the details.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import hmac
import importlib
import json
import logging
import os
import secrets
import select
import selectors
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from vspfs import errors, winplatform
from vspfs.errors import DaemonNotRunning, UsageError, VspError

log = logging.getLogger(__name__)

#: largest message body (request or reply) either side accepts, in bytes
MAX_MESSAGE = 1 << 20
#: default cap on connections served at once; more get a "busy" reply
MAX_CONNECTIONS = 64
#: default seconds a client has to deliver its whole request
READ_TIMEOUT = 10.0
#: longest path a Unix socket address can hold on Linux (sun_path minus NUL)
_MAX_SUN_PATH = 107
_HEADER = struct.Struct(">I")
_ROOT_SOCKET = "/run/vspfs/vspfs.sock"


class ControlError(VspError):
    """The control channel itself failed (as opposed to the requested operation)."""


class AccessDenied(ControlError):
    """The peer is not the daemon's owner or root, or the key is wrong or unreadable."""


class ProtocolError(ControlError):
    """A message was malformed, too large, cut short or not answered in time."""


class ServerBusy(ControlError):
    """The daemon already serves its maximum number of connections."""


class InternalError(ControlError):
    """The daemon hit an unexpected exception; its log has the traceback."""


# Error type names a reply may carry that are not in vspfs.errors.
_LOCAL_ERRORS: dict[str, type[VspError]] = {
    cls.__name__: cls for cls in (ControlError, AccessDenied, ProtocolError, ServerBusy, InternalError)
}


def default_socket_path() -> str:
    """Return where the daemon listens and the CLI connects by default.

    ``$VSPFS_SOCKET`` wins so tests and several daemons can coexist; root uses
    a system path; other users get their private runtime directory, or a
    per-user directory under the temp dir when there is none. Creates nothing:
    the server makes the directory (0700) when it starts.
    """
    env = os.environ.get("VSPFS_SOCKET")
    if env:
        return env
    if winplatform.running_on_windows():
        return winplatform.control_pipe_name(getpass.getuser())
    uid = os.geteuid()
    if uid == 0:
        return _ROOT_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "vspfs", "vspfs.sock")
    return os.path.join(tempfile.gettempdir(), f"vspfs-{uid}", "vspfs.sock")


def key_path_for(socket_path: str) -> str:
    """Return the key file that goes with ``socket_path`` (or with a pipe name).

    A socket's key sits beside it; a pipe is not a file, so its key lives in
    the user's key directory (``winplatform.default_key_dir``).
    """
    if is_pipe(socket_path):
        return winplatform.pipe_key_path(socket_path, winplatform.default_key_dir())
    return socket_path + ".key"


def is_pipe(channel: str) -> bool:
    """True when ``channel`` names a Windows named pipe rather than a socket path."""
    return winplatform.is_pipe_name(channel)


def normalize_channel(channel: str) -> str:
    """A channel as the daemon records it: socket paths absolute, pipe names as given."""
    return channel if is_pipe(channel) else os.path.abspath(channel)


def _winpipe() -> Any:
    """The named-pipe transport (:mod:`vspfs.winpipe`, ctypes): imported only when used.

    A function, so that tests on Linux can give a fake with the same
    surface and drive the pipe branches of the server and client.
    """
    return importlib.import_module("vspfs.winpipe")


def _current_sid() -> str:
    """This process's user SID (Windows); a function so tests can replace it."""
    return winplatform.current_user_sid()


def _pipe_unavailable(channel: str) -> UsageError:
    return UsageError(
        f"{channel} is a Windows named pipe, and this is {sys.platform}: "
        "set VSPFS_SOCKET (or --socket) to a socket path"
    )


def _check_socket_usable(channel: str) -> None:
    """UsageError for a socket path where Unix sockets and uids do not exist (Windows).

    The socket's guards need both (the owner's uid, SO_PEERCRED); Python on
    Windows has neither ``socket.AF_UNIX`` nor ``os.geteuid``. Asked of the
    platform itself, not of ``running_on_windows``, which tests replace to
    run Windows decisions over a real socket.
    """
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "geteuid"):
        raise UsageError(
            f"{channel} is a socket path, and there are no Unix sockets here ({sys.platform}): "
            "set VSPFS_SOCKET (or --socket) to a pipe name such as \\\\.\\pipe\\vspfs-NAME"
        )


# --------------------------------------------------------------------- framing


def _encode(obj: object) -> bytes:
    """Frame one JSON object; ValueError if it cannot be sent (not JSON, too big).

    ASCII with \\u escapes: a path that is not valid UTF-8 reaches Python as a
    str with lone surrogates (surrogateescape), which UTF-8 cannot encode but
    a JSON escape carries through unchanged, so both sides see the same bytes.
    """
    body = json.dumps(obj, allow_nan=False, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return _HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> object:
    """Refuse NaN and Infinity, which are not JSON even though Python accepts them."""
    raise ValueError(f"{name} is not valid JSON")


def _decode(body: bytes) -> dict[str, Any]:
    """Parse one message body; ValueError unless it is a UTF-8 JSON object."""
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not a UTF-8 JSON message ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError("message is not a JSON object")
    return obj


class _Oversize(ValueError):
    """The length prefix announces more than MAX_MESSAGE bytes."""


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes | None:
    """Read exactly ``n`` bytes; None on EOF before the first byte.

    The deadline is for the whole read, not each recv, so a client that
    trickles one byte at a time cannot keep a server thread forever.
    """
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(buf), 65536))
        if not chunk:
            if not buf:
                return None
            raise ValueError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _recv_message(sock: socket.socket, deadline: float | None) -> dict[str, Any] | None:
    """Read one framed message; None on a clean EOF before it started."""
    header = _recv_exact(sock, _HEADER.size, deadline)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_MESSAGE:
        raise _Oversize(f"message of {length} bytes exceeds the {MAX_MESSAGE}-byte limit")
    if length == 0:
        raise ValueError("empty message")
    body = _recv_exact(sock, length, deadline)
    if body is None:
        raise ValueError("connection closed before the message body")
    return _decode(body)


def _peer_uid(sock: socket.socket) -> int:
    """Return the uid of the process at the other end of a Unix socket.

    Fails closed where the platform offers no way to ask.
    """
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        raise AccessDenied(f"cannot check peer credentials on {sys.platform}: no SO_PEERCRED")
    creds = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# ---------------------------------------------------------------------- server

#: the connection a handler thread is answering (see client_gone)
_current = threading.local()


def client_gone() -> bool:
    """True when the client of the request this thread is handling has hung up.

    A client sends exactly one request and then only waits for the reply, so
    anything readable on its connection afterwards is the end of the stream:
    the client closed it, or the kernel did because the client died. Long
    requests (a backup job that lives as long as its client's connection)
    poll this to notice a client that was killed, and clean up after it.
    False outside a handler thread.
    """
    conn = getattr(_current, "conn", None)
    if conn is None:
        return False
    if not isinstance(conn, socket.socket):
        try:
            return bool(conn.peer_gone())  # a pipe: PeekNamedPipe fails once the client is gone
        except OSError:
            return True
    poller = select.poll()  # not select(): a daemon's fds can be numbered above 1024
    poller.register(conn, select.POLLIN | select.POLLHUP | getattr(select, "POLLRDHUP", 0))
    try:
        if not poller.poll(0):
            return False
    except OSError:
        return True
    try:
        data = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return data == b""


def _error_reply(exc_type: str, message: str, exit_code: int, details: dict[str, Any] | None = None) -> dict:
    """Build an error reply; ``details`` carries public attributes of domain errors."""
    err: dict[str, Any] = {"type": exc_type, "message": message, "exit_code": exit_code}
    if details:
        err["details"] = details
    return {"ok": False, "error": err}


def _error_details(exc: BaseException) -> dict[str, Any]:
    """Public JSON-able attributes of an exception (e.g. SnapshotInvalid.reason)."""
    out: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name.startswith("_") or name == "exit_code":
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[name] = value
    return out


def _one_line(text: str, limit: int = 500) -> str:
    """Collapse to one line of bounded length: error messages are shown as-is by the CLI."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class ControlServer:
    """Serve control requests on a Unix socket, one thread per connection.

    ``handler(op, args)`` runs in a connection thread, so it must be
    thread-safe. It returns a JSON-able result or raises
    :class:`vspfs.errors.VspError` (sent back with its type, message and exit
    code); any other exception becomes an ``InternalError`` reply and a logged
    traceback, never a dead server.
    """

    def __init__(
        self,
        socket_path: str,
        handler: Callable[[str, dict], object],
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._pipe = is_pipe(socket_path)
        if not self._pipe:
            _check_socket_usable(socket_path)
        self.socket_path = normalize_channel(socket_path)
        self.key_path = key_path_for(self.socket_path)
        self._lock_path = self.socket_path + ".lock"
        self._handler = handler
        self._read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._uid = -1 if self._pipe else os.geteuid()  # pipes check SIDs (no uids on Windows)
        self._key = b""
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._owned: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) we created
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._reading: set[Any] = set()  # sockets, or pipe connections
        self._reading_lock = threading.Lock()
        self._owner_sid = ""  # pipes: the daemon's user SID
        self._pipe_listener: Any = None

    # -- lifecycle

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Claim the socket path, write the key, listen, and serve in a daemon thread.

        Raises UsageError when another daemon holds the path, or the path
        cannot be used safely or at all; the message says how to proceed.
        """
        if self._thread is not None:
            raise RuntimeError("ControlServer already started")
        if self._pipe:
            self._start_pipe()
            return
        if len(os.fsencode(self.socket_path)) > _MAX_SUN_PATH:
            raise UsageError(
                f"control socket path {self.socket_path} is longer than {_MAX_SUN_PATH} bytes: "
                "set VSPFS_SOCKET to a shorter path"
            )
        try:
            self._prepare_dir(os.path.dirname(self.socket_path))
            self._take_lock()
            self._clear_stale_socket()
            self._write_key()
            self._listen()
        except OSError as exc:
            self._release_files()
            raise UsageError(
                f"cannot set up the control socket {self.socket_path}: {exc.strerror or exc}: "
                "check the directory's permissions or set VSPFS_SOCKET elsewhere"
            ) from exc
        except BaseException:
            self._release_files()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._accept_loop, name="vspfs-control", daemon=True)
        self._thread.start()
        log.info("control channel listening on %s", self.socket_path)

    def _start_pipe(self) -> None:
        """Claim the pipe name (first instance), write the key, serve in a daemon thread.

        The pipe's FILE_FLAG_FIRST_PIPE_INSTANCE is the lock a socket needs a
        lock file for: a second daemon on the same name fails to create it.
        """
        if not winplatform.running_on_windows():
            raise _pipe_unavailable(self.socket_path)
        transport = _winpipe()
        self._owner_sid = _current_sid()
        try:
            self._pipe_listener = transport.PipeListener(self.socket_path, self._owner_sid)
            os.makedirs(os.path.dirname(self.key_path), exist_ok=True)
            self._write_key_private(transport)
        except OSError as exc:
            self._release_files()
            raise UsageError(
                f"cannot set up the control pipe {self.socket_path}: {exc.strerror or exc}: "
                "set VSPFS_SOCKET to another pipe name"
            ) from exc
        except BaseException:
            self._release_files()
            raise
        self._thread = threading.Thread(target=self._pipe_accept_loop, name="vspfs-control", daemon=True)
        self._thread.start()
        log.info("control channel listening on %s", self.socket_path)

    def _write_key_private(self, transport: Any) -> None:
        """Write a fresh key into a file that only the owner (and SYSTEM) may open.

        The descriptor is set when the file is created under the temporary
        name (see _install_key), and the move into place keeps it.
        """

        def write(tmp: str, data: bytes) -> None:
            transport.write_private_file(tmp, data, self._owner_sid)

        self._install_key(write)

    def _install_key(self, write: Callable[[str, bytes], os.stat_result | None]) -> None:
        """Make a fresh key, have ``write`` create it under a random temporary
        name next to the key file, then move it into place atomically and
        remember which file is ours. ``write`` returns the new file's stat if
        it has it (else the installed file is stat'ed)."""
        self._key = secrets.token_hex(32).encode("ascii")
        directory, name = os.path.split(self.key_path)
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}")
        st = write(tmp, self._key + b"\n")
        try:
            os.replace(tmp, self.key_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if st is None:
            st = os.stat(self.key_path)
        self._owned[self.key_path] = (st.st_dev, st.st_ino)

    def close(self) -> None:
        """Stop accepting, drop idle connections, remove the socket, key and lock files.

        Requests already being handled finish in their threads and still get
        their reply; nothing new is accepted. Safe to call more than once.
        """
        if self._closing.is_set():
            return
        self._closing.set()
        if self._pipe_listener is not None:
            self._pipe_listener.close()  # wakes the accept thread
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._reading_lock:
            idle = list(self._reading)
        for conn in idle:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # a pipe connection cancels its pending read
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        self._release_files()

    # -- setup helpers

    def _prepare_dir(self, directory: str) -> None:
        """Create the socket directory 0700, or check that an existing one is safe.

        An existing directory must be a real directory (not a symlink) owned
        by us or root and not writable by others unless sticky (like /tmp):
        otherwise another user could swap our socket or key for theirs.
        """
        created = False
        try:
            os.mkdir(directory, 0o700)
            created = True
        except FileNotFoundError:
            os.makedirs(os.path.dirname(directory), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
                created = True
        except FileExistsError:
            pass
        if created:
            os.chmod(directory, 0o700)  # the umask may have narrowed it further; be exact
        st = os.lstat(directory)
        fix = "set VSPFS_SOCKET to a socket path in a directory you own"
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"control socket directory {directory} is not a plain directory: {fix}")
        if st.st_uid not in (self._uid, 0):
            raise UsageError(
                f"control socket directory {directory} belongs to uid {st.st_uid}, not to you: "
                f"remove it or {fix}"
            )
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UsageError(
                f"control socket directory {directory} is writable by others: chmod 700 it or {fix}"
            )

    def _take_lock(self) -> None:
        """Hold an exclusive lock for our lifetime so two daemons cannot race for the path.

        Re-checks after locking that the lock file is still the one at the
        path: a departing daemon unlinks it, and a lock on an unlinked file
        protects nothing.
        """
        for _ in range(10):
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            if not winplatform.try_lock_exclusive(fd):
                os.close(fd)
                raise UsageError(
                    f"another vspfs daemon is running on {self.socket_path}: stop it first "
                    "(or set VSPFS_SOCKET to serve on another socket)"
                ) from None
            held = os.fstat(fd)
            try:
                current = os.lstat(self._lock_path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                self._lock_fd = fd
                self._owned[self._lock_path] = (held.st_dev, held.st_ino)
                return
            os.close(fd)
        raise UsageError(f"could not lock {self._lock_path}: another daemon keeps replacing it")

    def _clear_stale_socket(self) -> None:
        """Remove a socket that nothing answers on; refuse if a daemon does answer."""
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise UsageError(
                f"{self.socket_path} exists and is not a socket: remove it or set VSPFS_SOCKET elsewhere"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(self.socket_path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", self.socket_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            return
        except OSError as exc:
            raise UsageError(f"cannot check control socket {self.socket_path}: {exc.strerror}") from None
        finally:
            probe.close()
        raise UsageError(
            f"another vspfs daemon is running on {self.socket_path}: stop it first "
            "(or set VSPFS_SOCKET to serve on another socket)"
        )

    def _write_key(self) -> None:
        """Write a fresh key, 0600, and move it into place atomically.

        O_EXCL|O_NOFOLLOW on a random temporary name means we never write
        through a file or symlink someone else prepared.
        """

        def write(tmp: str, data: bytes) -> os.stat_result:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, data)
                os.fsync(fd)
                return os.fstat(fd)
            finally:
                os.close(fd)

        self._install_key(write)

    def _listen(self) -> None:
        """Bind under a private temporary name, chmod 0600, then rename into place.

        Binding directly would leave the socket with umask permissions for a
        moment; changing the process umask instead would race with other
        threads of the daemon that create files.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        directory = os.path.dirname(self.socket_path)
        tmp = os.path.join(directory, f".vs{secrets.token_hex(6)}")
        if len(os.fsencode(tmp)) > _MAX_SUN_PATH:
            tmp = self.socket_path  # no room for a temporary name; the 0700 directory covers the gap
        try:
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            if tmp != self.socket_path:
                os.replace(tmp, self.socket_path)
            sock.listen(128)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        st = os.lstat(self.socket_path)
        self._owned[self.socket_path] = (st.st_dev, st.st_ino)
        self._listener = sock

    def _release_files(self) -> None:
        """Remove the files we created, if they are still ours, socket first."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        if self._pipe_listener is not None:
            with contextlib.suppress(OSError):
                self._pipe_listener.release()
            self._pipe_listener = None
        for path in (self.socket_path, self.key_path, self._lock_path):
            ident = self._owned.pop(path, None)
            if ident is None:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) == ident:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock only after the lock file is gone
            self._lock_fd = None

    # -- serving

    def _accept_loop(self) -> None:
        """Accept until close(); hand each connection to a thread if a slot is free."""
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                for key, _ in sel.select():
                    if key.fileobj is not self._listener or self._closing.is_set():
                        return
                    try:
                        conn, _addr = self._listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.warning("control channel cannot accept: %s", exc.strerror)
                            time.sleep(0.1)
                        continue
                    self._dispatch(conn)
        except Exception:
            log.exception("control channel accept loop failed")
        finally:
            sel.close()

    def _pipe_accept_loop(self) -> None:
        """Accept pipe clients until close(); the listener keeps one instance waiting."""
        listener = self._pipe_listener
        assert listener is not None
        try:
            while not self._closing.is_set():
                try:
                    conn = listener.accept()
                except OSError as exc:
                    log.warning("control pipe cannot accept: %s", exc)
                    time.sleep(0.1)
                    continue
                if conn is None:
                    return
                if self._closing.is_set():
                    conn.close()
                    return
                self._dispatch(conn)
        except Exception:
            log.exception("control channel accept loop failed")

    def _dispatch(self, conn: Any) -> None:
        """Start a connection thread, or answer "busy" without blocking the loop."""
        if not self._slots.acquire(blocking=False):
            log.warning("control channel busy: refusing a connection")
            self._reply_nowait(
                conn,
                _error_reply(
                    "ServerBusy",
                    "the vspfs daemon is serving too many requests at once: retry in a moment",
                    ServerBusy.exit_code,
                ),
            )
            return
        try:
            threading.Thread(target=self._serve, args=(conn,), name="vspfs-control-conn", daemon=True).start()
        except RuntimeError:
            self._slots.release()
            self._reply_nowait(
                conn,
                _error_reply(
                    "ServerBusy",
                    "the vspfs daemon cannot start a thread: retry in a moment",
                    ServerBusy.exit_code,
                ),
            )

    @staticmethod
    def _reply_nowait(conn: Any, reply: dict) -> None:
        """Best-effort small reply from the accept thread; never blocks on a peer for long."""
        try:
            if isinstance(conn, socket.socket):
                conn.setblocking(False)
                conn.send(_encode(reply))
            else:
                conn.settimeout(0.5)  # a pipe has no non-blocking send: a short deadline instead
                conn.sendall(_encode(reply))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: Any) -> None:
        """Handle one connection: authenticate, read one request, run it, reply."""
        with self._reading_lock:
            self._reading.add(conn)
        _current.conn = conn  # for client_gone() in a long request's handler
        try:
            reply = self._answer(conn)
            if reply is None:
                return
            try:
                data = _encode(reply)
            except (TypeError, ValueError) as exc:
                log.error("control channel: reply cannot be sent: %s", exc)
                data = _encode(
                    _error_reply(
                        "InternalError",
                        _one_line(f"the daemon's reply cannot be sent: {exc}"),
                        InternalError.exit_code,
                    )
                )
            conn.settimeout(self._read_timeout)
            conn.sendall(data)
        except OSError as exc:
            log.debug("control channel: connection dropped: %s", exc)
        except Exception:
            log.exception("control channel: unexpected failure serving a connection")
        finally:
            _current.conn = None
            with self._reading_lock:
                self._reading.discard(conn)
            conn.close()
            self._slots.release()

    def _answer(self, conn: Any) -> dict | None:
        """Return the reply for this connection, or None when nobody is left to answer."""
        refused = self._check_peer(conn)
        if refused is not None:
            return refused
        try:
            request = _recv_message(conn, time.monotonic() + self._read_timeout)
        except (TimeoutError, ValueError) as exc:
            msg = "timed out waiting for the request" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("control channel: bad request: %s", msg)
            return _error_reply("ProtocolError", f"bad request: {msg}", ProtocolError.exit_code)
        except OSError:
            return None  # the peer went away, or close() shut an idle connection
        if request is None:
            return None  # connected and left without a word, e.g. a liveness probe
        with self._reading_lock:
            self._reading.discard(conn)  # from here on close() lets the request finish
        return self._handle(request)

    def _check_peer(self, conn: Any) -> dict | None:
        """Return an error reply unless the peer is our uid or root (pipes: our SID or SYSTEM)."""
        if self._pipe:
            return self._check_pipe_peer(conn)
        try:
            uid = _peer_uid(conn)
        except AccessDenied as exc:
            return _error_reply("AccessDenied", str(exc), AccessDenied.exit_code)
        if uid in (self._uid, 0):
            return None
        log.warning("control channel: refused a client with uid %d", uid)
        return _error_reply(
            "AccessDenied",
            f"access denied: uid {uid} may not control the vspfs daemon of uid {self._uid} "
            "(run the command as that user or root)",
            AccessDenied.exit_code,
        )

    def _check_pipe_peer(self, conn: Any) -> dict | None:
        """The pipe's peer check: the client process's user SID must be ours or SYSTEM.

        The pipe's descriptor already admits nobody else; this is the second
        guard, as SO_PEERCRED is beside the socket's 0600 mode.
        """
        try:
            sid = conn.peer_sid()
        except OSError:
            sid = None
        if winplatform.pipe_peer_allowed(sid, self._owner_sid):
            return None
        log.warning("control channel: refused a client running as %s", sid or "an unknown user")
        return _error_reply(
            "AccessDenied",
            f"access denied: {sid or 'a process whose user cannot be read'} may not control the vspfs "
            f"daemon of {self._owner_sid} (run the command as that user)",
            AccessDenied.exit_code,
        )

    def _handle(self, request: dict[str, Any]) -> dict:
        """Authenticate and validate a parsed request, then run the handler."""
        key = request.get("key")
        if not isinstance(key, str) or not hmac.compare_digest(key.encode("utf-8"), self._key):
            log.warning("control channel: refused a request with a wrong or missing key")
            return _error_reply(
                "AccessDenied",
                f"access denied: wrong or missing control key (it is in {self.key_path})",
                AccessDenied.exit_code,
            )
        op = request.get("op")
        args = request.get("args", {})
        if not isinstance(op, str) or not op:
            return _error_reply(
                "ProtocolError", "bad request: 'op' must be a non-empty string", ProtocolError.exit_code
            )
        if not isinstance(args, dict):
            return _error_reply(
                "ProtocolError", "bad request: 'args' must be an object", ProtocolError.exit_code
            )
        try:
            return {"ok": True, "result": self._handler(op, args)}
        except VspError as exc:
            return _error_reply(type(exc).__name__, str(exc), int(exc.exit_code), _error_details(exc))
        except Exception as exc:
            log.exception("control request %r failed", op)
            message = _one_line(
                f"internal error in the vspfs daemon during {op!r}: {type(exc).__name__}: {exc}"
            )
            return _error_reply("InternalError", message + " (see the daemon log)", InternalError.exit_code)


# ---------------------------------------------------------------------- client


def _read_key(key_path: str) -> str:
    """Read the daemon's key, refusing a file that others could have written or read."""
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AccessDenied(
            f"the control key {key_path} is missing: restart the daemon (`vspfs serve BACKING`)"
        ) from None
    except PermissionError:
        raise AccessDenied(
            f"cannot read the control key {key_path}: run the command as the daemon's user or root"
        ) from None
    except OSError as exc:
        raise AccessDenied(f"cannot read the control key {key_path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o077:
            raise AccessDenied(
                f"the control key {key_path} is not a private file of yours or root's: "
                "remove it and restart the daemon"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    key = data.decode("ascii", "replace").strip()
    if not key:
        raise AccessDenied(f"the control key {key_path} is empty: restart the daemon")
    return key


def _raise_reply_error(error: object) -> None:
    """Re-raise an error reply as the matching VspError class, exit code preserved."""
    if not isinstance(error, dict):
        raise ProtocolError("the vspfs daemon sent a malformed error reply")
    type_name = error.get("type")
    message = error.get("message")
    exit_code = error.get("exit_code")
    if not isinstance(type_name, str) or not isinstance(message, str):
        raise ProtocolError("the vspfs daemon sent a malformed error reply")
    cls = _LOCAL_ERRORS.get(type_name)
    if cls is None:
        candidate = getattr(errors, type_name, None)
        is_error = isinstance(candidate, type) and issubclass(candidate, VspError)
        cls = candidate if is_error else VspError
    # Bypass subclass __init__ signatures (SnapshotInvalid takes id and reason):
    # the message was already formatted by the daemon and must stay identical.
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    details = error.get("details")
    if isinstance(details, dict):
        for name, value in details.items():
            if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
                setattr(exc, name, value)
    if isinstance(exit_code, int) and not isinstance(exit_code, bool):
        exc.exit_code = exit_code
    exc.remote_type = type_name  # type: ignore[attr-defined]
    raise exc


def request(
    op: str,
    args: dict | None = None,
    *,
    socket_path: str | None = None,
    timeout: float | None = 30.0,
) -> object:
    """Send one request to the daemon and return its result.

    Raises DaemonNotRunning when nothing listens on the socket, AccessDenied
    when the channel cannot be authenticated, ProtocolError on a malformed,
    missing or late reply, and the daemon's own error (same class by name,
    same message and exit code) when the operation failed. ``timeout`` bounds
    connecting and waiting for the reply; pass None for long operations such
    as a whole backup job.
    """
    path = socket_path or default_socket_path()
    payload = _encode({"key": "", "op": op, "args": {} if args is None else args})  # validate early
    if is_pipe(path):
        conn, key = _connect_pipe(path, timeout)
    else:
        _check_socket_usable(path)
        conn, key = _connect_socket(path, timeout)
    try:
        payload = _encode({"key": key, "op": op, "args": {} if args is None else args})
        try:
            try:
                conn.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may have refused us before reading: its reply is still queued
            reply = _recv_message(conn, None)
        except TimeoutError:
            raise ProtocolError(f"no reply from the vspfs daemon on {path} within {timeout} s") from None
        except _Oversize as exc:
            raise ProtocolError(f"the vspfs daemon's reply is too large: {exc}") from None
        except ValueError as exc:
            raise ProtocolError(f"malformed reply from the vspfs daemon: {exc}") from None
        except OSError as exc:
            raise ProtocolError(
                f"lost the connection to the vspfs daemon on {path}: {exc.strerror or exc}"
            ) from None
    finally:
        conn.close()
    if reply is None:
        raise ProtocolError(f"the vspfs daemon on {path} closed the connection without answering")
    ok = reply.get("ok")
    if ok is True:
        return reply.get("result")
    if ok is False:
        _raise_reply_error(reply.get("error"))
    raise ProtocolError("the vspfs daemon sent a reply without a valid 'ok' field")


@contextlib.contextmanager
def _connect_errors(path: str, kind: str, start: str, other_user: str) -> Iterator[None]:
    """A failed connection to the control ``kind`` (socket or pipe) as the
    one-line error the CLI shows: nobody serves it (``start`` says how to
    start a daemon), it belongs to another user, or it did not answer."""
    try:
        yield
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        raise DaemonNotRunning(f"no vspfs daemon is running on {path}: start one with `{start}`") from None
    except PermissionError:
        raise AccessDenied(
            f"permission denied on the control {kind} {path}: "
            f"the daemon belongs to another user ({other_user})"
        ) from None
    except TimeoutError:
        raise ProtocolError(f"the vspfs daemon on {path} did not accept the connection in time") from None
    except OSError as exc:
        raise DaemonNotRunning(f"cannot reach a vspfs daemon on {path}: {exc.strerror or exc}") from None


def _connect_socket(path: str, timeout: float | None) -> tuple[socket.socket, str]:
    """Connect to a Unix socket, check who serves it, read the key: (socket, key)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with _connect_errors(path, "socket", "vspfs serve BACKING", "run as that user or root"):
            sock.connect(path)
        server_uid = _peer_uid(sock)
        if server_uid not in (os.geteuid(), 0):
            raise AccessDenied(
                f"the control socket {path} is served by uid {server_uid}, not by you or root: "
                "refusing to talk to it"
            )
        key = _read_key(key_path_for(path))
    except BaseException:
        sock.close()
        raise
    return sock, key


def _connect_pipe(path: str, timeout: float | None) -> tuple[Any, str]:
    """Open a control pipe, check who serves it and that it is private, read the key.

    The checks run before the key leaves this process: a pipe that another
    user created first (squatting the name to collect keys) is refused by
    its owner and access list, and a server process of another user by its
    token's SID.
    """
    if not winplatform.running_on_windows():
        raise _pipe_unavailable(path)
    transport = _winpipe()
    mine = _current_sid()
    with _connect_errors(path, "pipe", "vspfs serve BACKING=L:", "run as that user"):
        conn = transport.connect(path, timeout)
    try:
        conn.settimeout(timeout)
        server_sid = conn.peer_sid()
        if not winplatform.pipe_peer_allowed(server_sid, mine):
            raise AccessDenied(
                f"the control pipe {path} is served by "
                f"{server_sid or 'a process whose user cannot be read'}, not by you or SYSTEM: "
                "refusing to talk to it"
            )
        try:
            winplatform.check_owner_only(conn.security(), mine)
        except (UsageError, ValueError) as exc:
            raise AccessDenied(f"{path}: {exc}") from None
        key = _read_key_private(key_path_for(path), transport, mine)
    except BaseException:
        conn.close()
        raise
    return conn, key


def _read_key_private(key_path: str, transport: Any, owner_sid: str) -> str:
    """Read a pipe daemon's key, refusing a file whose descriptor others could use."""
    try:
        data, descriptor = transport.read_private_file(key_path)
    except FileNotFoundError:
        raise AccessDenied(
            f"the control key {key_path} is missing: restart the daemon (`vspfs serve BACKING=L:`)"
        ) from None
    except PermissionError:
        raise AccessDenied(
            f"cannot read the control key {key_path}: run the command as the daemon's user"
        ) from None
    except OSError as exc:
        raise AccessDenied(f"cannot read the control key {key_path}: {exc.strerror or exc}") from None
    try:
        winplatform.check_owner_only(descriptor, owner_sid)
    except (UsageError, ValueError):
        raise AccessDenied(
            f"the control key {key_path} is not a private file of yours: remove it and restart the daemon"
        ) from None
    key = data.decode("ascii", "replace").strip()
    if not key:
        raise AccessDenied(f"the control key {key_path} is empty: restart the daemon")
    return key
