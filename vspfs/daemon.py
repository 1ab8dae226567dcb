"""The vspfs daemon: one process that hosts every live view and virtual drive.

All copy-on-write state lives in one :class:`vspfs.provider.Provider`, so one
process must own it, the FUSE mounts that feed it (a live view per served
volume, a virtual drive per mounted snapshot) and the control channel through
which the CLI asks for snapshots. This module is that owner:

* :class:`VolumeSpec` is one ``BACKING`` or ``BACKING=MOUNTPOINT`` argument;
* :class:`Daemon` validates, mounts, answers control requests and tears down;
* :func:`serve` runs a daemon in the foreground with signal handling.

Lifecycle, and why in this order:

1. validate every path before touching anything, so a typo costs nothing;
2. claim the control socket, so a second daemon on the same socket fails
   before it mounts anything (requests wait until the daemon is ready);
3. open each volume (the Volume takes a directory fd on the backing
   directory *before* the live view is mounted over it), remove stale
   leftovers of a daemon that died, warn about processes whose open files
   bypass the live view, then mount the live views;
4. serve requests until SIGINT/SIGTERM/SIGHUP (Windows: Ctrl-C, Ctrl-Break);
5. tear down: unmount each virtual drive and destroy its snapshot, unmount
   the live views, close the provider (cache files and retained areas go),
   close the control channel. Snapshots are transient: nothing survives.

Requests run in control-channel threads; ``_lock`` serialises them so that a
destroy cannot race a mount of the same snapshot, and teardown takes it too.
The mount binding is imported lazily (:func:`default_backend`) because the
core never imports a binding, and so that tests can give a fake one.

Windows (docs/windows.md): live views and virtual drives are drive letters
served by ``mount/winfsp.py``; ``BACKING=L:`` specs are parsed by
``winplatform.parse_serve_spec``; a drive letter is never a directory to
create. Every such branch asks :func:`on_windows`, which tests replace to run
the Windows decisions on Linux.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import ntpath
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from vspfs import __version__, winplatform
from vspfs.errors import DaemonNotRunning, MountError, SnapshotInvalid, UsageError, VspError
from vspfs.paths import inside as _inside
from vspfs.paths import printable as _printable
from vspfs.paths import real_path as _real

if TYPE_CHECKING:
    from vspfs.provider import Provider
    from vspfs.snapshot import Snapshot
    from vspfs.volume import Volume

log = logging.getLogger(__name__)

#: seconds a mount may take to answer before it counts as failed
MOUNT_TIMEOUT = 15.0
#: seconds an unmount may take before the adapter gives up (it may detach lazily)
UNMOUNT_TIMEOUT = 15.0
#: seconds a request waits for a daemon that is still mounting its live views
STARTUP_WAIT = 60.0
#: how often the main thread wakes up while waiting for a signal
_TICK = 0.5
#: how often the daemon checks that its live views are still mounted
_WATCH_EVERY = 2.0
#: what the daemon's mounts call themselves, used to recognise them in /proc/self/mountinfo
_MARK = "vspfs"


# --------------------------------------------------------------------- paths


def on_windows() -> bool:
    """The daemon's platform switch (drive letters, WinFsp); tests replace it."""
    return winplatform.running_on_windows()


def _target_key(path: str) -> str:
    """How a mount target is compared: a drive letter as "V:", a directory by its real path."""
    if winplatform.looks_like_drive_letter(path):
        return winplatform.parse_drive_letter(path)
    return _real(path)


def default_state_dir() -> str:
    """Where the daemon keeps its own state (and, by default, eligible cache files).

    ``$VSPFS_STATE_DIR`` wins so tests and several daemons can keep apart;
    root uses a system path; other users their XDG state directory. The
    provider creates it (0700) when it starts.
    """
    env = os.environ.get("VSPFS_STATE_DIR")
    if env:
        return env
    if on_windows():
        return ntpath.join(winplatform.default_key_dir(), "state")
    if os.geteuid() == 0:
        return "/var/lib/vspfs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "vspfs")


@dataclass(frozen=True)
class VolumeSpec:
    """One served volume as named on the command line.

    ``mountpoint`` is None when the live view is mounted over the backing
    directory itself (applications keep their paths; the daemon reaches the
    tree underneath through a directory fd taken before mounting).
    """

    backing: str
    mountpoint: str | None = None

    @classmethod
    def parse(cls, text: str) -> VolumeSpec:
        """Parse ``BACKING`` or ``BACKING=MOUNTPOINT`` (on Windows ``D:\\data=L:``).

        An argument that exists as a path is taken whole, so a backing
        directory whose name contains ``=`` can still be served over itself;
        otherwise the first ``=`` separates the two paths. On Windows the
        platform parser is used (it keeps ``L:`` a drive letter instead of
        making it the current directory of L:), and a live view needs a
        target: a drive letter cannot cover its own backing directory.
        """
        if not text:
            raise UsageError("empty volume argument: give BACKING or BACKING=MOUNTPOINT")
        if on_windows():
            backing, target = winplatform.parse_serve_spec(text)
            if target is None:
                raise UsageError(
                    f"on Windows a live view is a drive letter and cannot cover its backing directory: "
                    f"give {text}=L: (a free letter)"
                )
            return cls(backing, target)
        if "=" in text and not os.path.lexists(text):
            backing, _, mountpoint = text.partition("=")
            if not backing or not mountpoint:
                raise UsageError(f"bad volume argument {text!r}: give BACKING or BACKING=MOUNTPOINT")
            if winplatform.looks_like_drive_letter(mountpoint):
                raise winplatform.drive_letters_unsupported(mountpoint)
            return cls(os.path.abspath(backing), os.path.abspath(mountpoint))
        return cls(os.path.abspath(text), None)

    @property
    def on_letter(self) -> bool:
        """True when the live view is a drive letter (Windows)."""
        return winplatform.looks_like_drive_letter(self.mountpoint)

    @property
    def over(self) -> bool:
        """True when the live view is mounted over the backing directory."""
        if self.on_letter:
            return False
        return self.mountpoint is None or _real(self.mountpoint) == _real(self.backing)

    @property
    def target(self) -> str:
        """Where applications see the live view."""
        return self.mountpoint or self.backing

    def __str__(self) -> str:
        return self.backing if self.mountpoint is None else f"{self.backing}={self.mountpoint}"


# ------------------------------------------------------------- mount table


def _unescape_mountinfo(field_text: str) -> str:
    """Undo the octal escapes (``\\040`` for space ...) of /proc/self/mountinfo."""
    out = bytearray()
    raw = field_text.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and len(raw[i + 1 : i + 4]) == 3 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def mount_table() -> dict[str, tuple[str, str]]:
    """Mount point -> (filesystem type, source) from /proc/self/mountinfo.

    The last entry for a path wins (it is the one on top). Empty where the
    file does not exist (not Linux): callers then only lose extra checks.
    Empty on Windows, where "/proc" would name a directory of the current
    drive and WinFsp drives are not FUSE mounts anyway.
    """
    table: dict[str, tuple[str, str]] = {}
    if on_windows():
        return table
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                rest = right.split()
                if not sep or len(fields) < 5 or len(rest) < 2:
                    continue
                table[_unescape_mountinfo(fields[4])] = (rest[0], _unescape_mountinfo(rest[1]))
    except OSError:
        pass
    return table


def is_vspfs_mount(entry: tuple[str, str] | None) -> bool:
    """True for a FUSE mount that a vspfs daemon made (by type or source name)."""
    if entry is None:
        return False
    fstype, source = entry
    return fstype.startswith("fuse") and (_MARK in fstype or _MARK in source)


def is_dead_mount(path: str) -> bool:
    """True if ``path`` is a FUSE mount whose daemon is gone (ENOTCONN); never on Windows,
    where WinFsp removes a dead process's drives and directories itself."""
    if on_windows():
        return False
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def detach_dead_mount(path: str) -> bool:
    """Lazily unmount a dead vspfs FUSE mount at ``path``; True if it went away.

    auto_unmount normally removes the mount when a daemon dies; this is the
    fallback for a mount that outlived its daemon anyway (ENOTCONN on every
    access). Only vspfs's own mounts are touched. Never on Windows (see
    :func:`is_dead_mount`).
    """
    if not is_dead_mount(path) or not is_vspfs_mount(mount_table().get(path)):
        return False
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            log.info("removed the dead mount %s left by a daemon that died", path)
            return True
    return False


# ---------------------------------------------------------- open file scan


@dataclass
class Holder:
    """A process that holds files (or its working directory) under a backing directory."""

    pid: int
    command: str
    paths: list[str] = field(default_factory=list)


def processes_holding(roots: Iterable[str], *, exclude_pid: int | None = None) -> dict[str, list[Holder]]:
    """Scan /proc for processes with files open (or cwd/root) under each root.

    Their writes reach the backing filesystem directly and bypass the live
    view, so snapshots cannot protect them. Processes we may not inspect
    (other users', for a non-root daemon) are skipped: this is a warning
    aid, not a guarantee. Nothing on Windows, which has no /proc (its
    open handles would need NtQuerySystemInformation: not done).
    """
    if on_windows():
        return {}
    roots = [_real(r) for r in roots]
    found: dict[str, dict[int, Holder]] = {r: {} for r in roots}
    me = os.getpid() if exclude_pid is None else exclude_pid
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    for pid in pids:
        if pid == me:
            continue
        base = f"/proc/{pid}"
        try:
            names = [f"fd/{n}" for n in os.listdir(f"{base}/fd")]
        except OSError:
            continue
        targets: list[str] = []
        for name in [*names, "cwd", "root"]:
            try:
                target = os.readlink(f"{base}/{name}")
            except OSError:
                continue
            if target.startswith("/"):
                targets.append(target.removesuffix(" (deleted)"))
        if not targets:
            continue
        command = ""
        with contextlib.suppress(OSError), open(f"{base}/comm", encoding="utf-8", errors="replace") as f:
            command = f.read().strip()
        for target in targets:
            for root in roots:
                if _inside(target, root) and not (target == root and root == "/"):
                    holder = found[root].setdefault(pid, Holder(pid, command))
                    if target not in holder.paths:
                        holder.paths.append(target)
    return {root: list(h.values()) for root, h in found.items() if h}


# ---------------------------------------------------------------- bindings


class MountHandle(Protocol):
    """What the daemon needs from a mount made by an adapter."""

    mountpoint: str

    def wait_ready(self, timeout: float) -> object: ...

    def unmount(self, timeout: float) -> object: ...


class MountBackend(Protocol):
    """The adapter functions the daemon calls (``mount/fuse.py`` on Linux)."""

    def mount_live(
        self, volume: Volume, mountpoint: str, *, allow_other: bool = False, over: bool = False
    ) -> MountHandle: ...

    def mount_snapshot(
        self, snapshot: Snapshot, mountpoint: str, *, allow_other: bool = False
    ) -> MountHandle: ...


def default_backend() -> MountBackend:
    """The platform's adapter module, imported only when a daemon starts.

    Imported late so that the CLI (and ``vspfs cleanup``) work where the
    binding is not installed, and so the core never imports a binding. On
    Windows it is ``mount/winfsp.py``, which itself loads winfspy only when
    it mounts (and says what to install when it cannot).
    """
    if on_windows():
        try:
            from mount import winfsp  # type: ignore[import-not-found]
        except ImportError as exc:
            raise MountError(f"the WinFsp adapter cannot be loaded ({exc}): reinstall vspfs") from None
        return winfsp  # type: ignore[return-value]
    try:
        from mount import fuse  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MountError(
            f"the FUSE adapter cannot be loaded ({exc}): install fuse3 and mfusepy (pip install -e .)"
        ) from None
    return fuse  # type: ignore[return-value]


# -------------------------------------------------------------- daemon records


def socket_key(socket_path: str) -> str:
    """A short name for one daemon (by its socket or pipe) among those sharing a state directory."""
    if winplatform.is_pipe_name(socket_path):
        name = socket_path.replace("/", "\\").lower()  # pipe names are case-insensitive
        return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return hashlib.sha256(os.fsencode(_real(socket_path))).hexdigest()[:12]


def record_path(state_dir: str, socket_path: str) -> str:
    """Where a daemon records what it serves, for cleanup after it dies."""
    return os.path.join(state_dir, f"served-{socket_key(socket_path)}.json")


def read_records(state_dir: str) -> list[dict[str, Any]]:
    """Every daemon record in ``state_dir`` (a daemon that died leaves its own)."""
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return out
    for name in names:
        if not (name.startswith("served-") and name.endswith(".json")):
            continue
        path = os.path.join(state_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data["_path"] = path
            out.append(data)
    return out


def record_dirs(record: dict[str, Any]) -> list[str]:
    """The directories a daemon record says may hold vspfs leftovers."""
    dirs: list[str] = []
    for vol in record.get("volumes") or []:
        if isinstance(vol, dict) and isinstance(vol.get("backing"), str):
            dirs.append(vol["backing"])
    for cv in record.get("cache_volumes") or []:
        if isinstance(cv, str):
            dirs.append(cv)
    return dirs


def record_mounts(record: dict[str, Any]) -> list[str]:
    """The mount points a daemon record names (live views and virtual drives)."""
    out: list[str] = []
    for vol in record.get("volumes") or []:
        if isinstance(vol, dict) and isinstance(vol.get("mountpoint"), str):
            out.append(vol["mountpoint"])
    out.extend(m for m in record.get("drives") or [] if isinstance(m, str))
    return out


# ---------------------------------------------------------------------- daemon


@dataclass
class _Live:
    """A served volume and its live-view mount."""

    spec: VolumeSpec
    volume: Volume
    mountpoint: str  # real path where applications see it
    handle: MountHandle | None = None


@dataclass
class _Drive:
    """A virtual drive: one snapshot mounted at one directory."""

    snapshot_id: str
    path: str  # real path of the mount point
    handle: MountHandle
    created_dir: bool  # the daemon made the directory and removes it on unmount


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


class Daemon:
    """Owns the provider, the mounts and the control server of one ``vspfs serve``.

    Use :meth:`start`, then :meth:`wait` (or your own loop), then
    :meth:`shutdown`, which is safe after a failed or partial start.
    :meth:`request_stop` may be called from a signal handler or any thread.
    """

    def __init__(
        self,
        volumes: list[VolumeSpec],
        *,
        cache_volumes: Iterable[str] = (),
        socket_path: str | None = None,
        allow_other: bool = False,
        state_dir: str | None = None,
        backend: MountBackend | None = None,
        exclude_volumes: Iterable[str] = (),
    ) -> None:
        from vspfs.control import default_socket_path, normalize_channel
        from vspfs.jobs import JobManager

        self.specs = list(volumes)
        self.cache_volumes = [os.path.abspath(c) for c in cache_volumes]
        #: the VSP Volume Exclude List: volumes (or trees) that are never snapshotted
        self.exclude_volumes = [_real(e) for e in exclude_volumes]
        self.socket_path = normalize_channel(socket_path or default_socket_path())
        self.allow_other = allow_other
        self.state_dir = os.path.abspath(state_dir or default_state_dir())
        self._backend = backend
        #: a watcher process removes mounts left dead if we are killed (real mounts only)
        self._want_janitor = backend is None
        self._janitor: subprocess.Popen[bytes] | None = None
        self.provider: Provider | None = None
        self._server: Any = None
        self._live: list[_Live] = []
        self._drives: list[_Drive] = []
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._stopping = False
        self._start_failed = False
        self._shut_down = False
        self._record_written = False
        self.started = time.time()
        self._ops: dict[str, Callable[[dict[str, Any]], object]] = {
            "snapshot.create": self._op_snapshot_create,
            "mount": self._op_mount,
            "unmount": self._op_unmount,
            "list": self._op_list,
            "status": self._op_status,
            "destroy": self._op_destroy,
            "cleanup": self._op_cleanup,
            "changes": self._op_changes,
            "job.start": self._op_job_start,
            "job.status": self._op_job_status,
            "job.finish": self._op_job_finish,
        }
        #: requests that do not hold the daemon lock for their whole run: a backup
        #: job lasts as long as its command, a snapshot may wait for a quiet period,
        #: and `changes` may walk a large tree; they take the lock for each step
        #: that needs it
        self._unlocked_ops = {"job.start", "job.status", "job.finish", "changes", "snapshot.create"}
        self.jobs = JobManager(self)
        #: where backup jobs mount their drives by default (one directory per daemon socket)
        self.jobs_dir = os.path.join(self.state_dir, f"jobs-{socket_key(self.socket_path)}")
        self._changes: dict[str, tuple[float, str, list[list[str]]]] = {}  # token -> (expiry, snap, items)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Validate, claim the socket, open and mount every volume; return when ready.

        Raises UsageError / MountError / RuleViolation with a one-line
        message naming the path; the caller must still call :meth:`shutdown`.
        """
        try:
            self._start()
        except BaseException:
            self._start_failed = True
            self._ready.set()  # release requests that wait for us: they get an error
            raise

    def _start(self) -> None:
        if not self.specs:
            raise UsageError("no volume to serve: give at least one BACKING or BACKING=MOUNTPOINT")
        self._validate()  # before any import that may fail: a typo must get the clearest message

        from vspfs.control import ControlServer
        from vspfs.provider import Provider

        backend = self._backend or default_backend()
        self._backend = backend

        self._server = ControlServer(self.socket_path, self.handle)
        self._server.start()

        previous = self._previous_record()
        self.provider = Provider(
            self.state_dir, cache_volumes=self.cache_volumes, exclude=self.exclude_volumes
        )
        for spec in self.specs:
            try:
                vol = self.provider.add_volume(spec.backing)
            except OSError as exc:
                raise UsageError(f"cannot open volume {spec.backing}: {exc.strerror or exc}") from None
            target = _target_key(spec.target)
            vol.mountpoint = target
            self._live.append(_Live(spec, vol, target))

        self._remove_leftovers(previous)
        self._warn_open_files()
        self._write_record()
        if self._want_janitor and not on_windows():  # WinFsp removes a dead process's drives itself
            self._spawn_janitor()

        for live in self._live:
            if self._stop.is_set():
                return
            live.handle = self._mount(
                lambda live=live: backend.mount_live(
                    live.volume, live.mountpoint, allow_other=self.allow_other, over=live.spec.over
                ),
                f"live view of {live.volume.backing} at {live.mountpoint}",
            )
            log.info(
                "serving %s at %s%s",
                live.volume.backing,
                live.mountpoint,
                " (over the backing directory)" if live.spec.over else "",
            )
        self._ready.set()
        log.info(
            "vspfs daemon ready (pid %d): %d volume(s), control socket %s",
            os.getpid(),
            len(self._live),
            self.socket_path,
        )

    def wait(self) -> str:
        """Block until :meth:`request_stop`; returns the reason.

        Waits in short slices so that signal handlers run promptly in the
        main thread even on platforms where a long wait is not interruptible.
        """
        next_check = time.monotonic() + _WATCH_EVERY
        while not self._stop.wait(_TICK):
            if time.monotonic() >= next_check:
                self.check_live_views()
                next_check = time.monotonic() + _WATCH_EVERY
        return self._stop_reason

    def check_live_views(self) -> list[str]:
        """Notice a live view unmounted behind our back; invalidate its snapshots.

        Once the live view is gone, applications write straight to the
        backing directory and nothing is preserved any more: a snapshot of
        that volume can no longer be trusted, so it fails loudly (EIO, and
        `status` says why) instead of silently showing changed data.
        Returns the mount points found gone.
        """
        gone: list[str] = []
        with self._lock:
            if self._stopping:
                return gone
            for live in self._live:
                if live.handle is None or getattr(live.handle, "mounted", True):
                    continue
                gone.append(live.mountpoint)
                live.handle = None
                log.error(
                    "the live view at %s was unmounted outside vspfs: writes to %s no longer pass "
                    "through vspfs; restart the daemon to serve it again",
                    live.mountpoint,
                    live.volume.backing,
                )
                for snap in self._snapshots_of(live.volume):
                    invalidate = getattr(snap, "invalidate", None)
                    if invalidate is not None:
                        invalidate(f"the live view at {live.mountpoint} was unmounted while it was active")
        return gone

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask :meth:`wait` to return; safe from signal handlers and other threads."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def shutdown(self) -> bool:
        """Destroy every snapshot, unmount everything, remove cache files; True if clean.

        Each step runs even if an earlier one failed, because everything
        left behind (a mount, a cache file) is a problem for the user; the
        failures are logged one line each and make the result False.
        """
        if self._shut_down:
            return True
        self._stopping = True
        self._stop.set()
        self._ready.set()
        clean = True
        self.jobs.stop_all()  # each job destroys its own snapshots and says why in its report
        with self._lock:
            self._shut_down = True
            if self.provider is not None:
                for snap_id in list(self.provider.snapshots):
                    try:
                        self._destroy_one(snap_id)
                    except Exception as exc:
                        clean = False
                        log.error("could not destroy snapshot %s: %s", snap_id, exc)
            for drive in list(self._drives):  # drives of snapshots that are already gone
                clean &= self._unmount_drive(drive, quiet=True)
            for live in reversed(self._live):
                if live.handle is None:
                    continue
                try:
                    live.handle.unmount(UNMOUNT_TIMEOUT)
                    log.info("unmounted the live view at %s", live.mountpoint)
                except Exception as exc:
                    clean = False
                    log.error("could not unmount the live view at %s: %s", live.mountpoint, exc)
                live.handle = None
                live.volume.mountpoint = None
            if self.provider is not None:
                try:
                    self.provider.close()
                except Exception as exc:
                    clean = False
                    log.error("could not close every volume: %s", exc)
            if clean and self._record_written:
                self._remove_record()
            if self._server is not None:
                try:
                    self._server.close()
                except Exception as exc:
                    clean = False
                    log.error("could not close the control channel: %s", exc)
        if not self._start_failed:
            log.info("vspfs daemon stopped%s", "" if clean else " (with errors: see above)")
        return clean

    # ------------------------------------------------------------ start helpers

    def _validate(self) -> None:
        """Check every path up front; one clear line naming the first bad one."""
        mounts = mount_table()
        backings: dict[str, VolumeSpec] = {}
        targets: dict[str, VolumeSpec] = {}
        for spec in self.specs:
            if spec.on_letter:
                assert spec.mountpoint is not None
                if not on_windows():
                    raise winplatform.drive_letters_unsupported(spec.mountpoint)
                winplatform.check_drive_letter(spec.mountpoint)  # bad or taken: UsageError
            for role, path in (("volume", spec.backing), ("mountpoint", spec.mountpoint)):
                if path is None or (role == "mountpoint" and spec.on_letter):
                    continue
                if is_dead_mount(path) and not detach_dead_mount(path):
                    raise UsageError(
                        f"{role} {path} is a dead FUSE mount (its daemon died): "
                        f"unmount it with `fusermount3 -u -z {path}` and start again"
                    )
                if not os.path.lexists(path):
                    raise UsageError(f"{role} {path} does not exist: create the directory first")
                if not os.path.isdir(path):
                    raise UsageError(f"{role} {path} is not a directory")
                if is_vspfs_mount(mounts.get(_real(path))):
                    raise UsageError(
                        f"{role} {path} is already served by a vspfs daemon: stop that daemon "
                        "or name another directory"
                    )
            real = _real(spec.backing)
            if real in backings:
                raise UsageError(f"volume {spec.backing} is named twice")
            for other in backings:
                if _inside(real, other) or _inside(other, real):
                    raise UsageError(
                        f"volume {spec.backing} overlaps volume {backings[other].backing}: "
                        "serve directories that do not nest"
                    )
            backings[real] = spec
            target = _target_key(spec.target)
            if target in targets:
                raise UsageError(f"mountpoint {spec.target} is used for two volumes")
            targets[target] = spec
        for target, spec in targets.items():
            for real, owner in backings.items():
                if owner is spec and target == real:
                    continue
                if _inside(target, real) or _inside(real, target):
                    raise UsageError(
                        f"mountpoint {spec.target} overlaps volume {owner.backing}: "
                        "mount live views outside every served directory"
                    )
        for cv in self.cache_volumes:
            if not os.path.isdir(cv):
                raise UsageError(f"cache volume {cv} is not a directory: create it or name another")
        if self.allow_other and not on_windows() and os.geteuid() != 0 and not _fuse_conf_allows_other():
            raise UsageError("--allow-other needs 'user_allow_other' in /etc/fuse.conf when not run as root")

    def _previous_record(self) -> dict[str, Any] | None:
        path = record_path(self.state_dir, self.socket_path)
        for rec in read_records(self.state_dir):
            if rec.get("_path") == path:
                return rec
        return None

    def _remove_leftovers(self, previous: dict[str, Any] | None) -> None:
        """Remove what a daemon that died left behind (stale cache files, retained areas)."""
        assert self.provider is not None
        reports = [self.provider.cleanup()]
        if previous is not None:
            for mp in record_mounts(previous):
                detach_dead_mount(mp)
            served = {live.volume.backing for live in self._live}
            extra = [d for d in record_dirs(previous) if os.path.isdir(d) and _real(d) not in served]
            if extra:
                try:
                    reports.append(self.provider.cleanup(extra))
                except VspError as exc:
                    log.warning("could not clean up after the previous daemon: %s", exc)
        for report in reports:
            result = cleanup_result(report)
            for path in result["removed"]:
                log.info("removed stale %s", path)
            for kept in result["kept"]:
                log.warning("kept %s: %s", kept.get("path"), kept.get("reason"))
        from vspfs.jobs import remove_stale_job_dirs

        for path in remove_stale_job_dirs(self.jobs_dir):
            log.info("removed the stale job directory %s", path)

    def _warn_open_files(self) -> None:
        """Warn about processes whose open files bypass the live views."""
        roots = [live.volume.backing for live in self._live]
        for root, holders in processes_holding(roots).items():
            for h in holders:
                more = f" and {len(h.paths) - 3} more" if len(h.paths) > 3 else ""
                sample = ", ".join(h.paths[:3]) + more
                log.warning(
                    "process %d (%s) holds %s open under %s: its writes bypass the live view and "
                    "snapshots cannot protect them; restart it once the daemon is ready",
                    h.pid,
                    h.command or "?",
                    sample,
                    root,
                )

    def _write_record(self) -> None:
        """Record what this daemon serves, so `vspfs cleanup` can find leftovers after a crash."""
        data = {
            "pid": os.getpid(),
            "socket": self.socket_path,
            "started": _utc(self.started),
            "volumes": [{"backing": lv.volume.backing, "mountpoint": lv.mountpoint} for lv in self._live],
            "cache_volumes": [_real(c) for c in self.cache_volumes],
            "drives": [d.path for d in self._drives],
        }
        path = record_path(self.state_dir, self.socket_path)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
            os.replace(tmp, path)
            self._record_written = True
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc.strerror or exc)

    def _spawn_janitor(self) -> None:
        """Start the process that cleans up our mounts if this daemon is killed.

        auto_unmount alone is not enough: fusermount3 unmounts only if opening
        the mount point fails with ENOTCONN, and when the kernel releases a
        killed daemon's auto-unmount socket before its /dev/fuse file, the
        helper looks while the connection is still up (the open then fails with
        ECONNABORTED) and leaves the last mount dead. The janitor waits until
        this process is gone (all its files released), then lazily detaches
        any of our recorded mounts that answer ENOTCONN. It holds no fd but
        stdio (close_fds) and exits as soon as we do.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        path = record_path(self.state_dir, self.socket_path)
        try:
            self._janitor = subprocess.Popen(
                [sys.executable, "-m", "vspfs.daemon", "janitor", str(os.getpid()), path],
                stdin=subprocess.DEVNULL,
                cwd="/",
                env=env,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C for the daemon's terminal is not for it
            )
        except OSError as exc:
            log.warning("could not start the crash janitor (%s): a kill -9 may leave a dead mount", exc)

    def _remove_record(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record_path(self.state_dir, self.socket_path))

    def _mount(self, make: Callable[[], MountHandle], what: str) -> MountHandle:
        """Make a mount and wait until it answers; MountError naming it if not."""
        try:
            handle = make()
        except VspError:
            raise
        except Exception as exc:
            raise MountError(f"cannot mount the {what}: {_why(exc)}") from None
        try:
            ready = handle.wait_ready(MOUNT_TIMEOUT)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                handle.unmount(UNMOUNT_TIMEOUT)
            if isinstance(exc, VspError):
                raise  # the adapter's message already names the mount and the cause
            if not isinstance(exc, Exception):
                raise
            raise MountError(f"cannot mount the {what}: {_why(exc)}") from None
        if ready is False:
            with contextlib.suppress(Exception):
                handle.unmount(UNMOUNT_TIMEOUT)
            raise MountError(f"cannot mount the {what}: it did not answer within {MOUNT_TIMEOUT:g} s")
        return handle

    # ------------------------------------------------------------ requests

    def handle(self, op: str, args: dict[str, Any]) -> object:
        """Control-channel entry point: run one request, return a JSON-able result.

        Runs in a connection thread. Requests that arrive while the daemon
        is still mounting wait for it; requests during shutdown are refused.
        """
        if op == "ping":
            return self._op_ping(args)
        fn = self._ops.get(op)
        if fn is None:
            raise UsageError(f"unknown request {op!r}: the CLI and the daemon are different versions?")
        if not self._ready.wait(STARTUP_WAIT):
            raise VspError("the vspfs daemon is still starting: retry in a moment")
        if self._start_failed or self._stopping:
            raise DaemonNotRunning("the vspfs daemon is shutting down")
        log.debug("request %s %s", op, args)
        if op in self._unlocked_ops:
            try:
                return fn(args)
            except VspError as exc:
                log.warning("%s refused: %s", op, exc)
                raise
        with self._lock:
            if self._stopping:
                raise DaemonNotRunning("the vspfs daemon is shutting down")
            try:
                return fn(args)
            except VspError as exc:
                log.warning("%s refused: %s", op, exc)
                raise

    def _op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "socket": self.socket_path,
            "ready": self._ready.is_set() and not self._start_failed,
            "stopping": self._stopping,
        }

    # -- naming

    def find_volume(self, name: str) -> Volume:
        """A served volume named by its backing path, its live-view path, its id or its name.

        On Windows the live view's drive letter names it too ("L:").
        """
        if winplatform.looks_like_drive_letter(name):
            letter = winplatform.parse_drive_letter(name)
            for live in self._live:
                if live.mountpoint == letter:
                    return live.volume
        if os.path.isabs(name):
            real = _real(name)
            for live in self._live:
                if real in (live.volume.backing, live.mountpoint):
                    return live.volume
        else:
            for live in self._live:
                if name in (live.volume.volume_id, live.volume.name):
                    return live.volume
        served = ", ".join(live.mountpoint for live in self._live) or "none"
        raise UsageError(f"{name} is not a served volume (served: {served})")

    def _snapshot(self, snap_id: str) -> Snapshot:
        assert self.provider is not None
        snap = self.provider.snapshots.get(snap_id)
        if snap is None:
            raise UsageError(f"no snapshot {snap_id}: see `vspfs list` for the live snapshots")
        return snap

    def _live_of(self, vol: Volume) -> _Live | None:
        return next((lv for lv in self._live if lv.volume is vol), None)

    # -- records

    def snapshot_status(self, snap: Snapshot) -> dict[str, Any]:
        """The engine's status of a snapshot merged with what only the daemon knows."""
        status = dict(snap.status())
        vol = snap.volume
        live = self._live_of(vol)
        status["volume"] = {
            "backing": vol.backing,
            "mountpoint": live.mountpoint if live else getattr(vol, "mountpoint", None),
            "id": vol.volume_id,
            "name": getattr(vol, "name", os.path.basename(vol.backing)),
        }
        status.pop("volume_id", None)
        status.pop("mountpoint", None)
        display = getattr(snap.cache, "display_path", None)
        if display:
            status["cache_file"] = display
        status["mounts"] = [d.path for d in self._drives if d.snapshot_id == snap.id]
        return status

    def _snapshot_summary(self, snap: Snapshot) -> dict[str, Any]:
        full = self.snapshot_status(snap)
        keys = ("id", "state", "invalid_reason", "volume", "created", "cache_file", "mounts")
        return {k: full.get(k) for k in keys}

    def _volume_record(self, live: _Live) -> dict[str, Any]:
        vol = live.volume
        return {
            "name": getattr(vol, "name", os.path.basename(vol.backing)),
            "id": vol.volume_id,
            "backing": vol.backing,
            "mountpoint": live.mountpoint,
            "over": live.spec.over,
            "snapshots": sorted(s.id for s in self._snapshots_of(vol)),
        }

    def _snapshots_of(self, vol: Volume) -> list[Snapshot]:
        assert self.provider is not None
        return [s for s in self.provider.snapshots.values() if s.volume is vol]

    def _daemon_record(self) -> dict[str, Any]:
        assert self.provider is not None
        return {
            "pid": os.getpid(),
            "version": __version__,
            "socket": self.socket_path,
            "state_dir": self.state_dir,
            "cache_volumes": [_real(c) for c in self.cache_volumes],
            "exclude_volumes": list(self.exclude_volumes),
            "started": _utc(self.started),
            "allow_other": self.allow_other,
        }

    # -- mount directories

    def _prepare_drive_letter(self, path: str | None) -> str:
        """Check a drive letter for a virtual drive ("V:"), or pick the first free one.

        Never creates anything: a drive letter is not a directory. Drive
        letters exist only on Windows; elsewhere this is the one-line
        UsageError that says so. A letter this daemon already uses is
        MountError (as an occupied directory is); a bad letter, or one
        Windows reports in use, is UsageError.
        """
        if not on_windows():
            raise winplatform.drive_letters_unsupported(path)
        ours = {d.path: f"snapshot {d.snapshot_id}" for d in self._drives}
        ours.update({lv.mountpoint: f"the live view of {lv.volume.backing}" for lv in self._live})
        if path is None:
            return winplatform.first_free_letter(lambda: set(winplatform.taken_letters_windows()) | set(ours))
        letter = winplatform.parse_drive_letter(path)
        if letter in ours:
            raise MountError(
                f"drive {letter} already shows {ours[letter]}: unmount it first or choose another"
            )
        return winplatform.check_drive_letter(letter)

    def _prepare_new_dir(self, path: str) -> str:
        """Windows: check a directory for a virtual drive, which WinFsp will create; its path.

        WinFsp mounts on a directory it creates itself, and refuses one that
        exists (mount/winfsp.py), so unlike on Linux the daemon must not make
        it: the parent must exist and the path must not (exit 2 otherwise;
        8 if it is one of our drives). The caller records it as made by us,
        so that whatever is left after the unmount is removed (rmdir only).
        """
        parent, name = os.path.split(os.path.abspath(path).rstrip("\\/"))
        if not name or not os.path.isdir(parent):
            raise UsageError(f"mount directory {path}: its parent directory {parent} does not exist")
        real = os.path.join(_real(parent), name)
        self._refuse_taken_mount_dir(path, real)
        if os.path.lexists(real):
            raise UsageError(
                f"mount directory {path} exists: on Windows a virtual drive is mounted on a new "
                "directory, which WinFsp creates; give a path that does not exist yet"
            )
        return real

    def _refuse_taken_mount_dir(self, path: str, real: str) -> None:
        """A directory that already shows one of our drives (MountError), or
        lies inside a served volume (UsageError), cannot take a drive."""
        for drive in self._drives:
            if drive.path == real:
                raise MountError(
                    f"{path} already shows snapshot {drive.snapshot_id}: "
                    f"unmount it first (`vspfs unmount {path}`)"
                )
        for live in self._live:
            for root in (live.volume.backing, live.mountpoint):
                if _inside(real, root):
                    raise UsageError(
                        f"mount directory {path} lies inside served volume {live.mountpoint}: "
                        "mount virtual drives outside every served volume"
                    )

    def _prepare_mount_dir(self, path: str | None) -> tuple[str, bool]:
        """Check (and create if missing) a virtual drive directory; (real path, created).

        A missing parent or a non-directory is a bad argument (UsageError,
        exit 2); a directory that cannot take a mount because something
        occupies it (a drive, another mount, files) is MountError (exit 8).
        A drive letter (or None: the first free one, Windows only) is
        checked by :meth:`_prepare_drive_letter` and never created; on
        Windows a directory is left for WinFsp to create
        (:meth:`_prepare_new_dir`).
        """
        if path is None or winplatform.looks_like_drive_letter(path):
            return self._prepare_drive_letter(path), False
        if on_windows():
            return self._prepare_new_dir(path), True
        created = False
        try:
            if not os.path.lexists(path):
                parent = os.path.dirname(path.rstrip("/")) or "/"
                if not os.path.isdir(parent):
                    raise UsageError(f"mount directory {path} does not exist, nor does its parent {parent}")
                os.mkdir(path, 0o755)
                created = True
            real = _real(path)
            if not os.path.isdir(real):
                raise UsageError(f"mount directory {path} is not a directory")
            self._refuse_taken_mount_dir(path, real)
            if os.path.ismount(real):
                raise MountError(f"mount directory {path} is already a mount point: choose another directory")
            if not created and os.listdir(real):
                raise MountError(f"mount directory {path} is not empty: choose an empty directory")
        except OSError as exc:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise UsageError(f"mount directory {path}: {exc.strerror or exc}") from None
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise
        return real, created

    def _mount_drive(self, snap: Snapshot, path: str | None) -> _Drive:
        """Mount ``snap`` read-only at ``path`` (a directory, made if missing, or a drive letter)."""
        assert self._backend is not None
        real, created = self._prepare_mount_dir(path)
        backend = self._backend
        try:
            handle = self._mount(
                lambda: backend.mount_snapshot(snap, real, allow_other=self.allow_other),
                f"snapshot {snap.id} at {real}",
            )
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(real)
            raise
        drive = _Drive(snap.id, real, handle, created)
        self._drives.append(drive)
        self._write_record()
        log.info("snapshot %s mounted at %s", snap.id, real)
        return drive

    def _unmount_drive(self, drive: _Drive, *, quiet: bool = False) -> bool:
        """Unmount one virtual drive; raises MountError unless ``quiet`` (then logs)."""
        try:
            drive.handle.unmount(UNMOUNT_TIMEOUT)
        except Exception as exc:
            msg = f"cannot unmount {drive.path}: {_why(exc)}"
            if not quiet:
                raise MountError(msg) from None
            log.error("%s", msg)
            return False
        if drive in self._drives:
            self._drives.remove(drive)
        if drive.created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(drive.path)
        log.info("unmounted %s (snapshot %s)", drive.path, drive.snapshot_id)
        self._write_record()
        return True

    def _destroy_one(self, snap_id: str) -> None:
        """Unmount a snapshot's drives, then destroy it (cache file and retained entries go)."""
        assert self.provider is not None
        snap = self._snapshot(snap_id)
        for drive in [d for d in self._drives if d.snapshot_id == snap_id]:
            self._unmount_drive(drive)
        self.provider.destroy(snap)  # the provider logs it

    def _without_own(self, result: dict[str, Any]) -> dict[str, Any]:
        """Drop this daemon's own live cache files from "kept": they are not leftovers."""
        assert self.provider is not None
        own: set[str] = set()
        for snap in self.provider.snapshots.values():
            own.add(snap.cache.path)
            display = getattr(snap.cache, "display_path", None)
            if display:
                own.add(display)
        result["kept"] = [k for k in result["kept"] if k.get("path") not in own]
        return result

    # -- for backup jobs (vspfs/jobs.py), which run outside the request lock

    def live_view_of(self, vol: Volume) -> str:
        """Where applications see ``vol`` (what a job reads when it has no snapshot)."""
        live = self._live_of(vol)
        return live.mountpoint if live is not None else vol.backing

    def served_roots(self) -> list[str]:
        """Backing directories and live-view mount points: no drive may be mounted in them."""
        return [p for live in self._live for p in (live.volume.backing, live.mountpoint)]

    def has_snapshot(self, snap: Snapshot) -> bool:
        return self.provider is not None and self.provider.snapshots.get(snap.id) is snap

    def flush_live_drives(self, vols: Iterable[Volume]) -> None:
        """Windows: push what the cache manager holds for these volumes' live drives
        into the engine, just before a snapshot set holds their writes.

        WinFsp caches file data, so a write an application made before the
        snapshot may still be in the cache and reach the engine only after
        it (docs/windows.md, "What the core still needs", item 6). This runs
        before the hold, never under it: the flush's writes must get through
        the live view, which the hold would stop. Nothing to do on Linux,
        where FUSE passes each write on before the application's returns.
        Outside the daemon lock, so that other requests are not kept waiting.
        """
        if not on_windows():
            return
        wanted = set(map(id, vols))
        for live in list(self._live):
            if id(live.volume) in wanted and live.handle is not None and live.spec.on_letter:
                winplatform.flush_drive(live.mountpoint)

    def job_snapshot_set(self, vols: list[Volume], **kwargs: Any) -> list[Snapshot]:
        """Create a job's snapshot set under the daemon lock (see Provider.create_snapshot_set),
        after flushing the live drives (Windows, :meth:`flush_live_drives`)."""
        self.flush_live_drives(vols)
        with self._lock:
            if self._stopping or self.provider is None:
                raise DaemonNotRunning("the vspfs daemon is shutting down")
            return self.provider.create_snapshot_set(vols, **kwargs)

    def drive_dirs(self, base: str, vols: list[Volume]) -> list[str]:
        """BASE/<volume name> for each volume (unique where names repeat)."""
        return list(_drive_dirs(base, vols))

    def job_mount(self, snap: Snapshot, path: str) -> str:
        """Mount a job's snapshot at ``path``; the drive's real path."""
        with self._lock:
            if self._stopping:
                raise DaemonNotRunning("the vspfs daemon is shutting down")
            return self._mount_drive(snap, path).path

    def job_destroy(self, snap: Snapshot) -> None:
        """Destroy a job's snapshot if it still exists (unmounting its drives first)."""
        with self._lock:
            if self.has_snapshot(snap):
                self._destroy_one(snap.id)

    # -- operations

    def _op_job_start(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.op_start(args)

    def _op_job_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.op_status(args)

    def _op_job_finish(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.op_finish(args)

    def _op_changes(self, args: dict[str, Any]) -> dict[str, Any]:
        """Paths changed since a snapshot, in pages that fit a control message.

        The first request computes the whole list and keeps it for a minute
        under a token; the client asks for the following pages with it.
        """
        token = _opt_str(args, "token")
        offset = args.get("offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise UsageError("request argument 'offset' must be an integer >= 0")
        now = time.monotonic()
        for key in [k for k, (expiry, _s, _i) in list(self._changes.items()) if expiry < now]:
            self._changes.pop(key, None)
        if token is None:
            with self._lock:
                snap = self._snapshot(_req_str(args, "snapshot"))
            try:
                found = snap.changes()
            except VspError:
                raise
            except OSError as exc:
                if not self.has_snapshot(snap):
                    raise UsageError(f"snapshot {snap.id} was destroyed while listing its changes") from None
                raise VspError(f"cannot list the changes of snapshot {snap.id}: {exc}") from None
            items: list[list[str]] = []
            for kind in ("created", "modified", "deleted"):
                items += [[kind, _printable(p)] for p in found[kind]]
            items += [["renamed", _printable(a), _printable(b)] for a, b in found["renamed"]]
            token = secrets.token_hex(8)
            self._changes[token] = (now + 60.0, snap.id, items)
        entry = self._changes.get(token)
        if entry is None:
            raise UsageError("the list of changes expired: run `vspfs changes` again")
        _expiry, snap_id, items = entry
        page: list[list[str]] = []
        budget = 256 * 1024
        end = offset
        while end < len(items) and (budget > 0 or not page):
            page.append(items[end])
            budget -= sum(len(x) + 8 for x in items[end])
            end += 1
        if end >= len(items):
            self._changes.pop(token, None)
        return {
            "snapshot": snap_id,
            "token": token,
            "total": len(items),
            "offset": offset,
            "items": page,
            "next": end if end < len(items) else None,
        }

    def _op_snapshot_create(self, args: dict[str, Any]) -> dict[str, Any]:
        """Snapshot one volume, or several as one atomic set, after an optional quiet
        period; optionally mount them."""
        from vspfs.control import client_gone
        from vspfs.jobs import when_quiet

        assert self.provider is not None
        names = _str_list(args, "volumes")
        if not names:
            raise UsageError("no volume to snapshot: name at least one served volume")
        mount = _opt_str(args, "mount")
        vols: list[Volume] = []
        for name in names:
            vol = self.find_volume(name)
            if vol not in vols:
                vols.append(vol)
        targets: list[str | None] = [None] * len(vols)
        if mount is not None and winplatform.looks_like_drive_letter(mount):
            if not on_windows():
                raise winplatform.drive_letters_unsupported(mount)
            if len(vols) != 1:
                raise UsageError(
                    f"drive {mount} can show one snapshot: with several volumes give a directory, "
                    "or mount each snapshot on its own letter afterwards (vspfs mount SNAPSHOT V:)"
                )
            targets = [mount]
        elif mount is not None:
            if not os.path.isabs(mount):
                raise UsageError(f"mount directory {mount} must be an absolute path")
            if len(vols) == 1:
                targets = [mount]
            else:
                targets = list(_drive_dirs(mount, vols))
                if not os.path.isdir(mount):
                    raise UsageError(f"mount directory {mount} is not a directory: create it first")
        kwargs: dict[str, Any] = {}
        per_volume = args.get("volume_options") or {}
        if not isinstance(per_volume, dict):
            raise UsageError("request argument 'volume_options' must be an object")
        for key, arg in (("initial_size", "cache_size"), ("max_size", "max_cache_size")):
            value = args.get(arg)
            if value is not None and (not isinstance(value, (int, str)) or isinstance(value, bool)):
                raise UsageError(f"{arg} must be a size such as 1G or 10%")
            sizes: dict[str, Any] = {v.volume_id: value for v in vols}
            for name, opts in per_volume.items():  # [volumes."PATH"] of the configuration file
                if not isinstance(opts, dict) or arg not in opts:
                    continue
                try:
                    vol = self.find_volume(name)
                except UsageError:
                    continue  # a volume this daemon does not serve
                if vol.volume_id in sizes:
                    sizes[vol.volume_id] = opts[arg]
            if any(v is not None for v in sizes.values()):
                kwargs[key] = sizes
        for key in ("policy", "cache_volume"):
            value = _opt_str(args, key)
            if value is not None:
                kwargs[key] = value
        wait, timeout = args.get("busy_file_wait") or 0, args.get("busy_file_timeout", 300)
        for key, value in (("busy-file-wait", wait), ("busy-file-timeout", timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
                raise UsageError(f"{key} must be a number of seconds >= 0")

        def take(check: Callable[[], None] | None) -> dict[str, Any]:
            assert self.provider is not None
            # Windows: cached writes reach the engine now; with a quiet period, any
            # they bring make `check` answer NotQuiet, and the wait starts over
            self.flush_live_drives(vols)
            with self._lock:
                if self._stopping:
                    raise DaemonNotRunning("the vspfs daemon is shutting down")
                snaps = self.provider.create_snapshot_set(vols, under_hold=check, **kwargs)  # logs each
                mounted: dict[str, str] = {}
                try:
                    for snap, target in zip(snaps, targets, strict=True):
                        if target is not None:
                            mounted[snap.id] = self._mount_drive(snap, target).path
                except BaseException:
                    for snap in snaps:
                        try:
                            self._destroy_one(snap.id)
                        except Exception as exc:
                            log.error("could not roll back snapshot %s: %s", snap.id, exc)
                    raise
                return {
                    "snapshots": [{**self.snapshot_status(s), "mount": mounted.get(s.id)} for s in snaps],
                }

        # the quiet period is waited for outside the daemon lock: other requests go on meanwhile
        def stop() -> bool:
            return self.stopping or client_gone()

        return when_quiet(vols, float(wait), float(timeout), take, stop=stop)

    def _op_mount(self, args: dict[str, Any]) -> dict[str, Any]:
        snap = self._snapshot(_req_str(args, "snapshot"))
        path = _opt_str(args, "dir")  # None: the first free drive letter from V: down (Windows)
        if path is None or winplatform.looks_like_drive_letter(path):
            if not on_windows():
                raise winplatform.drive_letters_unsupported(path)
        elif not os.path.isabs(path):
            raise UsageError(f"mount directory {path} must be an absolute path")
        if not snap.valid:
            # its drive could only answer EIO: say so now rather than after a backup started
            raise SnapshotInvalid(
                snap.id, f"{snap.invalid_reason or 'unknown reason'}; it cannot be mounted, destroy it"
            )
        drive = self._mount_drive(snap, path)
        return {"snapshot": snap.id, "mount": drive.path}

    def _op_unmount(self, args: dict[str, Any]) -> dict[str, Any]:
        path = _req_str(args, "dir")
        if winplatform.looks_like_drive_letter(path) and not on_windows():
            raise winplatform.drive_letters_unsupported(path)
        real = _target_key(path)
        for drive in self._drives:
            if drive.path == real:
                self._unmount_drive(drive)
                return {"snapshot": drive.snapshot_id, "unmounted": drive.path}
        for live in self._live:
            if real == live.mountpoint:
                raise UsageError(
                    f"{path} is the live view of {live.volume.backing}: it stays mounted while the "
                    "daemon runs (stop the daemon to unmount it)"
                )
        raise UsageError(f"{path} is not a virtual drive of this daemon: see `vspfs list`")

    def _op_list(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.provider is not None
        snaps = sorted(self.provider.snapshots.values(), key=lambda s: (s.created_ns, s.id))
        return {
            "daemon": {"pid": os.getpid(), "socket": self.socket_path},
            "volumes": [self._volume_record(lv) for lv in self._live],
            "snapshots": [self._snapshot_summary(s) for s in snaps],
        }

    def _op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.provider is not None
        snap_id = _opt_str(args, "snapshot")
        if snap_id is not None:
            return self.snapshot_status(self._snapshot(snap_id))
        snaps = sorted(self.provider.snapshots.values(), key=lambda s: (s.created_ns, s.id))
        return {
            "daemon": self._daemon_record(),
            "volumes": [self._volume_record(lv) for lv in self._live],
            "snapshots": [self.snapshot_status(s) for s in snaps],
        }

    def _op_destroy(self, args: dict[str, Any]) -> dict[str, Any]:
        ids = _str_list(args, "snapshots")
        if not ids:
            raise UsageError("no snapshot to destroy: name at least one (see `vspfs list`)")
        for snap_id in ids:
            self._snapshot(snap_id)  # all or nothing for unknown ids
        destroyed: list[str] = []
        for snap_id in dict.fromkeys(ids):
            self._destroy_one(snap_id)
            destroyed.append(snap_id)
        return {"destroyed": destroyed}

    def _op_cleanup(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.provider is not None
        names = _str_list(args, "volumes")
        paths: list[str] = []
        for name in names:
            try:
                paths.append(self.find_volume(name).backing)
            except UsageError:
                if not os.path.isabs(name):
                    raise
                if not os.path.isdir(name):
                    raise UsageError(f"{name} is not a directory: name a volume or cache volume") from None
                paths.append(_real(name))
        result = self._without_own(cleanup_result(self.provider.cleanup(paths or None)))
        for path in result["removed"]:
            log.info("removed stale %s", path)
        result["daemon"] = True
        return result


# ------------------------------------------------------------------- helpers


def cleanup_result(report: object) -> dict[str, Any]:
    """Normalise what ``Provider.cleanup`` returns into {"removed": [...], "kept": [...]}."""
    if hasattr(report, "as_dict"):
        data = report.as_dict()
        return {"removed": list(data.get("removed", [])), "kept": list(data.get("kept", []))}
    if isinstance(report, dict):
        return {"removed": list(report.get("removed", [])), "kept": list(report.get("kept", []))}
    return {"removed": list(report or []), "kept": []}  # type: ignore[call-overload]


def _drive_dirs(base: str, vols: list[Volume]) -> Iterator[str]:
    """DIR/<volume name> for each volume of a set, made unique where names repeat."""
    used: set[str] = set()
    for vol in vols:
        name = getattr(vol, "name", "") or vol.volume_id
        if name in used:
            name = f"{name}-{vol.volume_id[:8]}"
        used.add(name)
        yield os.path.join(base, name)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _req_str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"request argument {key!r} must be a non-empty string")
    return value


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"request argument {key!r} must be a non-empty string")
    return value


def _str_list(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"request argument {key!r} must be a list of non-empty strings")
    return list(value)


def _fuse_conf_allows_other() -> bool:
    try:
        with open("/etc/fuse.conf", encoding="utf-8") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


# --------------------------------------------------------------------- serve


def stop_signals() -> tuple[int, ...]:
    """The signals that stop the daemon, those of them that exist here.

    Windows has no SIGHUP, and a console's Ctrl-Break arrives as SIGBREAK
    (SIGTERM can be handled there, but nothing sends it: ``os.kill(pid,
    SIGTERM)`` is TerminateProcess, which no handler sees).
    """
    return tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
    )


def serve(
    volumes: list[VolumeSpec],
    cache_volumes: Iterable[str] = (),
    socket_path: str | None = None,
    allow_other: bool = False,
    *,
    state_dir: str | None = None,
    backend: MountBackend | None = None,
    exclude_volumes: Iterable[str] = (),
) -> int:
    """Run a daemon in the foreground until SIGINT/SIGTERM/SIGHUP (or SIGBREAK); return the exit code.

    Signal handlers are installed before anything is mounted: libfuse only
    installs its own handlers where the disposition is still the default, so
    ours stay in charge and a signal always leads to a full teardown. Must
    run in the main thread (Python delivers signals there). Raises VspError
    when the daemon cannot start, after undoing what it had done.
    """
    daemon = Daemon(
        volumes,
        cache_volumes=cache_volumes,
        socket_path=socket_path,
        allow_other=allow_other,
        state_dir=state_dir,
        backend=backend,
        exclude_volumes=exclude_volumes,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    for sig in stop_signals():
        if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # started under nohup: a hangup must not stop the daemon
        previous[sig] = signal.signal(sig, on_signal)
    try:
        try:
            daemon.start()
        except BaseException:
            daemon.shutdown()
            raise
        reason = daemon.wait()
        log.info("%s: shutting down (destroying snapshots, unmounting)", reason or "stop requested")
        return 0 if daemon.shutdown() else 1
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, handler)


# -------------------------------------------------------------------- janitor


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: its files are released)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _wait_for_exit(pid: int) -> None:
    """Block until ``pid`` has exited, with a pidfd where the kernel has them."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while not _process_gone(pid):
        time.sleep(0.5)


def janitor(pid: int, record: str, *, grace: float = 2.0) -> int:
    """Run in the crash janitor: after daemon ``pid`` exits, detach its dead mounts.

    A clean shutdown removes the record, so there is nothing to do; a new
    daemon that rewrote the record owns the mounts in it now. Cache files
    and retained areas are left to `vspfs cleanup` or the next `serve`,
    which check their locks. Never started on Windows (nothing to detach:
    WinFsp removes a dead process's drives), and a no-op there.
    """
    if on_windows():
        return 0
    _wait_for_exit(pid)
    try:
        with open(record, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return 0
    if not isinstance(data, dict) or data.get("pid") != pid:
        return 0
    mounts = [mp for mp in record_mounts(data) if is_vspfs_mount(mount_table().get(mp))]
    deadline = time.monotonic() + grace  # let auto_unmount do its job first
    while mounts and time.monotonic() < deadline:
        time.sleep(0.1)
        mounts = [mp for mp in mounts if is_vspfs_mount(mount_table().get(mp))]
    for mp in mounts:
        if detach_dead_mount(mp):
            print(f"vspfs janitor: removed the dead mount {mp} left by daemon {pid}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "janitor":
        for _sig in stop_signals():  # it must outlive a signal meant for the daemon
            signal.signal(_sig, signal.SIG_IGN)
        sys.exit(janitor(int(sys.argv[2]), sys.argv[3]))
    print("usage: python -m vspfs.daemon janitor PID RECORD (started by `vspfs serve`)", file=sys.stderr)
    sys.exit(2)
