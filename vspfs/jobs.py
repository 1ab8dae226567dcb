"""Backup jobs, as the daemon runs them: quiet period, snapshot set, drives, cleanup.

``vspfs backup`` (vspfs/backup.py) is the client: it runs the user's backup
command. Everything that must outlive a crash of that client lives here, in
the daemon, which owns the snapshots anyway:

* **the quiet period** is measured here, because only the daemon sees every
  write (``Volume.last_change_ns`` / ``change_count`` move on every change
  through a live view). It is checked once more while every write of the
  set is held, just before the snapshots are recorded, so no write can slip
  in between "it is quiet" and the snapshot;
* **the snapshot set** is created and its virtual drives mounted here, and
  files that are open for writing are looked at for live databases;
* **the job's lifetime is its client's connection**. The client's
  ``job.start`` request is answered only when the job has ended: while the
  job runs, the connection stays open and its handler thread watches it. If
  the client goes away without saying so (killed, crashed, its machine
  session closed) the kernel closes the connection, the handler notices
  (``control.client_gone``) and destroys the job's snapshots, unmounts its
  drives and removes its cache files. Nothing depends on the client's own
  cleanup, which a SIGKILL would skip; and a client that is only stopped
  (Ctrl-Z) keeps its snapshots, because its connection stays open.

The client follows the job with ``job.status`` (progress, cache use,
warnings, an invalid snapshot) and ends it with ``job.finish``, which
returns the final report. Requests about one job need its id, which the
client chose and which only it and the daemon's owner can see.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat as statmod
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from vspfs import hostfs
from vspfs.control import client_gone
from vspfs.databases import DatabaseHint, detect
from vspfs.errors import DaemonNotRunning, QuietPeriodTimeout, UsageError, VspError
from vspfs.paths import inside as _inside
from vspfs.paths import printable

if TYPE_CHECKING:
    from vspfs.daemon import Daemon
    from vspfs.snapshot import Snapshot
    from vspfs.volume import Volume

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how often a job looks at its volumes, its client and its snapshots (seconds)
TICK = 0.05
#: how long a finished job's report stays available to job.status / job.finish
KEEP_FINISHED = 120.0
#: how long job.finish waits for the job's cleanup
FINISH_TIMEOUT = 120.0
#: how long the daemon's shutdown waits for running jobs to clean up themselves
STOP_TIMEOUT = 20.0

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{3,63}")
_CHOICES = {"on_timeout": ("continue", "abort"), "on_error": ("continue", "abort")}

# How a job ended (``ended_by`` in its report); the client maps them to exit codes.
FINISHED = "finished"  # the client ended it after its command
INTERRUPTED = "interrupted"  # the client ended it early (Ctrl-C, SIGTERM, an invalid snapshot)
CLIENT_GONE = "client-gone"  # the client's connection closed without job.finish
DAEMON_STOPPING = "daemon-stopping"
QUIET_TIMEOUT = "quiet-timeout"  # --on-timeout abort
SNAPSHOT_ERROR = "snapshot-error"  # --on-error abort
FAILED = "failed"  # an unexpected error in the daemon (a bug: its log has the traceback)


class NotQuiet(Exception):
    """A write came in between the quiet-period check and the write hold: try again."""


Seen = list[tuple[int, int]]


def quiet_state(vols: list[Volume]) -> tuple[float, Seen]:
    """(seconds since the last change on any of ``vols``, what was seen) from the live views' stamps."""
    now = time.monotonic_ns()
    seen = [(v.last_change_ns, v.change_count) for v in vols]
    return max(0.0, min((now - last) / 1e9 for last, _ in seen)), seen


def still_quiet(vols: list[Volume], seen: Seen) -> Callable[[], None]:
    """An ``under_hold`` check: NotQuiet if any volume changed since ``seen``."""

    def check() -> None:
        for v, before in zip(vols, seen, strict=True):
            if (v.last_change_ns, v.change_count) != before:
                raise NotQuiet

    return check


def when_quiet(
    vols: list[Volume],
    wait: float,
    timeout: float,
    take: Callable[[Callable[[], None] | None], T],
    *,
    stop: Callable[[], bool] = lambda: False,
) -> T:
    """``take(check)`` once none of ``vols`` changed for ``wait`` seconds (``check``
    re-verifies that under the write hold); QuietPeriodTimeout after ``timeout``.
    Used by `vspfs snapshot create --busy-file-wait`; backup jobs run the same
    steps with their own bookkeeping."""
    if wait <= 0:
        return take(None)
    t0 = time.monotonic()
    while True:
        if stop():
            raise DaemonNotRunning("the request was abandoned: the client left or the daemon is stopping")
        quiet, seen = quiet_state(vols)
        waited = time.monotonic() - t0
        if quiet >= wait:
            try:
                return take(still_quiet(vols, seen))
            except NotQuiet:
                continue
        if waited >= timeout:
            raise QuietPeriodTimeout(
                f"no quiet period of {wait:g} s on {', '.join(v.backing for v in vols)} within "
                f"{timeout:g} s: writes kept coming; retry later or give a shorter --busy-file-wait"
            )
        time.sleep(min(max(wait - quiet, 0.005), TICK, max(0.005, timeout - waited)))


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def _seconds(args: dict[str, Any], key: str) -> float:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise UsageError(f"{key.replace('_', '-')} must be a number of seconds >= 0")
    return float(value)


def _size_arg(value: object, key: str) -> int | str | None:
    if value is None or (isinstance(value, str) and value) or (isinstance(value, int) and value >= 0):
        if isinstance(value, bool):
            raise UsageError(f"{key} must be a size such as 1G or 10%")
        return value  # type: ignore[return-value]
    raise UsageError(f"{key} must be a size such as 1G or 10%")


def _paths(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and os.path.isabs(v) for v in value):
        raise UsageError(f"request argument {key!r} must be a list of absolute paths")
    return list(value)


@dataclass
class JobVolume:
    """One volume of a job: backed up from a snapshot, or read live (and why)."""

    name: str  # as the client named it (the key of {drive:NAME} and VSPFS_DRIVES)
    volume: Volume
    live_view: str  # where applications (and a live backup) see it
    excluded: str | None = None  # the exclude-list entry that keeps it live
    initial_size: int | str | None = None
    max_size: int | str | None = None
    snapshot: Snapshot | None = None
    drive: str | None = None
    live_reason: str | None = None
    status: dict[str, Any] | None = None  # its snapshot's last status (kept after destroy)
    open_for_write: list[str] = field(default_factory=list)
    databases: list[DatabaseHint] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        st = self.status or {}
        source = "snapshot" if self.snapshot is not None else ("live" if self.live_reason else None)
        return {
            "volume": self.name,
            "backing": self.volume.backing,
            "live_view": self.live_view,
            "source": source,
            "live_reason": self.live_reason,
            "excluded": self.excluded is not None,
            "drive": self.drive,
            "snapshot": self.snapshot.id if self.snapshot is not None else None,
            "state": st.get("state"),
            "invalid_reason": st.get("invalid_reason"),
            "created": st.get("created"),
            "created_ns": st.get("created_ns"),
            "cache_file": st.get("cache_file"),
            "cache_bytes": st.get("cache_bytes"),
            "cache_allocated": st.get("cache_allocated"),
            "cache_max": st.get("cache_max"),
            "bytes_preserved": st.get("bytes_preserved"),
            "chunks_preserved": st.get("chunks_preserved"),
            "pinned_bytes": st.get("pinned_bytes"),
            "open_for_write": [printable(p) for p in self.open_for_write],
            "databases": [{**h.as_dict(), "path": printable(h.path)} for h in self.databases],
            "warnings": list(st.get("warnings") or []),
        }


class Job:
    """One backup job: runs in the thread that serves its client's ``job.start``."""

    def __init__(self, manager: JobManager, args: dict[str, Any]) -> None:
        self.manager = manager
        daemon = manager.daemon
        job_id = args.get("job")
        if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
            raise UsageError("request argument 'job' must be a job id of 4-64 letters, digits, '.', '_', '-'")
        self.id = job_id
        names = args.get("volumes")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise UsageError("no volume to back up: name at least one served volume")
        self.busy_file_wait = _seconds(args, "busy_file_wait")
        self.busy_file_timeout = _seconds(args, "busy_file_timeout")
        for key, choices in _CHOICES.items():
            if args.get(key) not in choices:
                raise UsageError(f"{key.replace('_', '-')} must be one of {', '.join(choices)}")
        self.on_timeout: str = args["on_timeout"]
        self.on_error: str = args["on_error"]
        policy = args.get("policy") or "invalidate"
        if policy not in ("invalidate", "refuse-writes"):
            raise UsageError("policy must be invalidate or refuse-writes")
        self.policy: str = policy
        self.cache_volumes = _paths(args, "cache_volumes")
        excludes = [os.path.realpath(p) for p in _paths(args, "exclude_volumes")]
        mount_dir = args.get("mount_dir")
        if mount_dir is not None and (not isinstance(mount_dir, str) or not os.path.isabs(mount_dir)):
            raise UsageError("mount directory must be an absolute path")
        if mount_dir is not None:
            real = os.path.realpath(mount_dir)
            for root in daemon.served_roots():
                if _inside(real, root):
                    raise UsageError(
                        f"mount directory {mount_dir} lies inside served volume {root}: "
                        "mount virtual drives outside every served volume"
                    )
        self.mount_dir: str | None = mount_dir
        self._made_mount_dir = False
        default_initial = _size_arg(args.get("cache_size"), "cache-size")
        default_max = _size_arg(args.get("max_cache_size"), "max-cache-size")
        per_volume = args.get("volume_options") or {}
        if not isinstance(per_volume, dict):
            raise UsageError("request argument 'volume_options' must be an object")

        self.volumes: list[JobVolume] = []
        for name in names:
            vol = daemon.find_volume(name)
            if any(jv.volume is vol for jv in self.volumes):
                raise UsageError(f"volume {name} is named twice")
            live = daemon.live_view_of(vol)
            jv = JobVolume(name, vol, live, initial_size=default_initial, max_size=default_max)
            for ex in [*daemon.exclude_volumes, *excludes]:
                if _inside(vol.backing, ex) or _inside(live, ex):
                    jv.excluded = ex
                    jv.live_reason = f"excluded ({ex} is in the VSP Volume Exclude List)"
                    break
            for key, opts in per_volume.items():
                if not isinstance(opts, dict):
                    raise UsageError(f"volume options for {key} must be an object")
                try:
                    if daemon.find_volume(key) is not vol:
                        continue
                except UsageError:
                    continue  # a volume of another daemon
                if "cache_size" in opts:
                    jv.initial_size = _size_arg(opts["cache_size"], f"cache_size of {key}")
                if "max_cache_size" in opts:
                    jv.max_size = _size_arg(opts["max_cache_size"], f"max_cache_size of {key}")
            self.volumes.append(jv)

        self.phase = "quiet"  # quiet -> snapshot -> ready -> ending -> ended
        self.started_ns = time.time_ns()
        self._t0 = time.monotonic()
        self.quiet_found: bool | None = None
        self.quiet_waited = 0.0
        self.quiet_for = 0.0
        self.quiet_retries = 0
        self.snapshot_error: str | None = None
        self.ended_by: str | None = None
        self.ended_ns: int | None = None
        self.messages: list[str] = []
        self._finish = threading.Event()
        self._finish_reason = FINISHED
        self.done = threading.Event()

    # ------------------------------------------------------------- lifecycle

    @property
    def snapshot_volumes(self) -> list[JobVolume]:
        return [jv for jv in self.volumes if jv.excluded is None]

    def request_finish(self, reason: str) -> None:
        if not self._finish.is_set():
            self._finish_reason = reason
            self._finish.set()

    def _should_stop(self) -> str | None:
        """Why the job must end now (client ended it, went away, daemon stopping), or None."""
        if self._finish.is_set():
            return self._finish_reason
        if self.manager.daemon.stopping:
            return DAEMON_STOPPING
        if client_gone():
            return CLIENT_GONE
        return None

    def run(self) -> None:
        """The whole job on the daemon's side; returns when it has ended and is cleaned up."""
        try:
            stop = self._prepare()
            if stop is None:
                self.phase = "ready"
                log.info("job %s: ready (%s)", self.id, ", ".join(self._sources()))
                while (stop := self._should_stop()) is None:
                    self._sample()
                    time.sleep(TICK * 2)
            self.ended_by = stop
        except Exception as exc:
            self.ended_by = FAILED
            log.exception("job %s failed", self.id)
            self.messages.append(f"the job failed in the daemon: {type(exc).__name__}: {exc} (see its log)")
        finally:
            self.phase = "ending"
            self._cleanup()
            self.ended_ns = time.time_ns()
            self.phase = "ended"
            log.info("job %s ended (%s)", self.id, self.ended_by)
            self.done.set()

    def _sources(self) -> list[str]:
        out = []
        for jv in self.volumes:
            out.append(f"{jv.name}: snapshot {jv.snapshot.id}" if jv.snapshot else f"{jv.name}: live")
        return out

    # --------------------------------------------------------- quiet period

    def _prepare(self) -> str | None:
        """Quiet period, then the snapshot set and its drives; why to stop early, or None."""
        vols = self.snapshot_volumes
        if not vols:
            self.phase = "snapshot"
            self._record_live_opens()
            return None
        if self.busy_file_wait <= 0:
            self.quiet_found = True
        while True:
            stop = self._should_stop()
            if stop is not None:
                return stop
            quiet, seen = quiet_state([v.volume for v in vols])
            self.quiet_for = quiet
            self.quiet_waited = time.monotonic() - self._t0
            if self.busy_file_wait <= 0 or quiet >= self.busy_file_wait:
                self.quiet_found = True
                self.phase = "snapshot"
                try:
                    self._snapshot(vols, seen if self.busy_file_wait > 0 else None)
                except NotQuiet:
                    self.quiet_retries += 1
                    self.phase = "quiet"
                    continue
                return self._after_snapshot_error()
            if self.quiet_waited >= self.busy_file_timeout:
                self.quiet_found = False
                msg = (
                    f"no quiet period of {self.busy_file_wait:g} s on "
                    f"{', '.join(v.name for v in vols)} within {self.busy_file_timeout:g} s"
                )
                if self.on_timeout == "abort":
                    self.messages.append(f"{msg}: job aborted (--on-timeout abort)")
                    return QUIET_TIMEOUT
                self.messages.append(f"{msg}: backing up WITHOUT a snapshot, from the live volumes")
                for jv in vols:
                    jv.live_reason = "quiet period not found"
                self.phase = "snapshot"
                self._record_live_opens()
                return None
            # sleep until quiet could first be reached, but keep an eye on the client
            left = self.busy_file_wait - quiet
            time.sleep(min(max(left, 0.005), TICK, max(0.005, self.busy_file_timeout - self.quiet_waited)))

    def _snapshot(self, vols: list[JobVolume], seen: Seen | None) -> None:
        """Take the set and mount its drives; on failure record why (see _after_snapshot_error)."""
        daemon = self.manager.daemon
        check = None if seen is None else still_quiet([jv.volume for jv in vols], seen)
        try:
            snaps = daemon.job_snapshot_set(
                [jv.volume for jv in vols],
                initial_size={jv.volume.volume_id: jv.initial_size for jv in vols},
                max_size={jv.volume.volume_id: jv.max_size for jv in vols},
                policy=self.policy,
                cache_volume=self.cache_volumes or None,
                under_hold=check,
            )
        except NotQuiet:
            raise
        except (VspError, OSError) as exc:
            self._snapshot_failed(vols, exc)
            return
        for jv, snap in zip(vols, snaps, strict=True):
            jv.snapshot = snap
            jv.status = daemon.snapshot_status(snap)
        try:
            base = self._mount_base()
            dirs = daemon.drive_dirs(base, [jv.volume for jv in vols])
            for jv, path in zip(vols, dirs, strict=True):
                assert jv.snapshot is not None
                jv.drive = daemon.job_mount(jv.snapshot, path)
        except (VspError, OSError) as exc:
            self._destroy_snapshots()
            self._snapshot_failed(vols, exc)
            return
        for jv in vols:
            self._look_for_databases(jv)
        self._record_live_opens()
        log.info(
            "job %s: snapshot set taken after %.2f s (quiet for %.2f s)",
            self.id,
            self.quiet_waited,
            self.quiet_for,
        )

    def _snapshot_failed(self, vols: list[JobVolume], exc: BaseException) -> None:
        why = str(exc) if isinstance(exc, VspError) else (getattr(exc, "strerror", None) or str(exc))
        self.snapshot_error = why
        for jv in vols:
            jv.snapshot = None
            jv.drive = None
            jv.status = None
        log.warning("job %s: could not snapshot: %s", self.id, why)

    def _after_snapshot_error(self) -> str | None:
        if self.snapshot_error is None:
            return None
        if self.on_error == "abort":
            self.messages.append(f"could not snapshot: {self.snapshot_error}: job aborted (--on-error abort)")
            return SNAPSHOT_ERROR
        self.messages.append(
            f"could not snapshot: {self.snapshot_error}: backing up WITHOUT a snapshot, from the live volumes"
        )
        for jv in self.snapshot_volumes:
            jv.live_reason = f"could not snapshot: {self.snapshot_error}"
        self._record_live_opens()
        return None

    def _mount_base(self) -> str:
        """The directory under which the job's drives are mounted (made here if needed).

        By default a directory of its own in the daemon's state directory: if
        the daemon dies, what is left there is the daemon's to remove when it
        starts again (``remove_stale_job_dirs``), not litter in /tmp.
        """
        if self.mount_dir is None:
            base = self.manager.daemon.jobs_dir
            if any(_inside(os.path.realpath(base), root) for root in self.manager.daemon.served_roots()):
                self.mount_dir = tempfile.mkdtemp(prefix=f"vspfs-job-{self.id[:12]}-")
            else:
                os.makedirs(base, mode=0o700, exist_ok=True)
                self.mount_dir = os.path.join(base, self.id)
                os.mkdir(self.mount_dir, 0o700)
            self._made_mount_dir = True
        elif not os.path.lexists(self.mount_dir):
            os.mkdir(self.mount_dir, 0o700)
            self._made_mount_dir = True
        elif not os.path.isdir(self.mount_dir):
            raise UsageError(f"mount directory {self.mount_dir} is not a directory")
        return self.mount_dir

    # --------------------------------------------------------- open files

    def _record_live_opens(self) -> None:
        """Volumes read live: what is open for writing now, and any live database."""
        for jv in self.volumes:
            if jv.snapshot is None and jv.live_reason is not None and not jv.open_for_write:
                jv.open_for_write = jv.volume.open_for_write()
                jv.databases = _databases(jv.volume, jv.open_for_write)
                for hint in jv.databases:
                    self.messages.append(
                        hint.message(jv.live_view).replace(
                            "the snapshot holds a crash-consistent copy only",
                            "it is read LIVE, without a snapshot: the copy may not even be crash-consistent",
                        )
                    )

    def _look_for_databases(self, jv: JobVolume) -> None:
        assert jv.snapshot is not None
        jv.open_for_write = list(jv.snapshot.open_for_write)
        jv.databases = _databases(jv.volume, jv.open_for_write)
        for hint in jv.databases:
            jv.snapshot.warn(hint.message(jv.live_view))

    # --------------------------------------------------------- while running

    def _sample(self) -> None:
        """Refresh each snapshot's status (cache use, warnings, validity) for status and report."""
        daemon = self.manager.daemon
        for jv in self.volumes:
            snap = jv.snapshot
            if snap is None:
                continue
            if daemon.has_snapshot(snap):
                jv.status = daemon.snapshot_status(snap)
            elif jv.status is not None and jv.status.get("state") == "valid":
                jv.status = {
                    **jv.status,
                    "state": "invalid",
                    "invalid_reason": snap.invalid_reason or "destroyed outside the job",
                }

    def _destroy_snapshots(self) -> None:
        daemon = self.manager.daemon
        for jv in self.volumes:
            if jv.snapshot is None:
                continue
            try:
                daemon.job_destroy(jv.snapshot)
            except Exception as exc:
                log.error("job %s: could not destroy snapshot %s: %s", self.id, jv.snapshot.id, exc)
                self.messages.append(f"could not destroy snapshot {jv.snapshot.id}: {exc}")

    def _cleanup(self) -> None:
        """Destroy the job's snapshots (drives unmounted, cache files removed), remove its directory."""
        with contextlib.suppress(Exception):
            self._sample()
        self._destroy_snapshots()
        if self._made_mount_dir and self.mount_dir is not None:
            try:
                os.rmdir(self.mount_dir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("job %s: could not remove %s: %s", self.id, self.mount_dir, exc.strerror or exc)

    # ------------------------------------------------------------- reports

    def report(self) -> dict[str, Any]:
        """Everything about the job, JSON-ready: progress while it runs, the report at the end."""
        now = time.monotonic()
        warnings: list[str] = list(self.messages)
        for jv in self.volumes:
            for w in (jv.status or {}).get("warnings") or []:
                text = w if jv.live_view in w else f"{jv.name}: {w}"
                if text not in warnings:
                    warnings.append(text)
        return {
            "job": self.id,
            "phase": self.phase,
            "ended_by": self.ended_by,
            "started": _utc(self.started_ns),
            "ended": _utc(self.ended_ns) if self.ended_ns else None,
            "elapsed_s": round(now - self._t0, 3),
            "quiet_period": {
                "busy_file_wait": self.busy_file_wait,
                "busy_file_timeout": self.busy_file_timeout,
                "on_timeout": self.on_timeout,
                "found": self.quiet_found,
                "waited_s": round(self.quiet_waited, 3),
                "quiet_for_s": round(self.quiet_for, 3),
                "retries": self.quiet_retries,
            },
            "on_error": self.on_error,
            "snapshot_error": self.snapshot_error,
            "mount_dir": self.mount_dir,
            "volumes": [jv.record() for jv in self.volumes],
            "warnings": warnings,
        }


def remove_stale_job_dirs(jobs_dir: str) -> list[str]:
    """Remove the empty drive directories of jobs of a daemon that died; the paths removed.

    Only empty directories go (rmdir, never recursive): a mount still in place
    or anything else in them stays, and is for `vspfs cleanup` or a person.
    """
    removed: list[str] = []
    try:
        jobs = sorted(os.listdir(jobs_dir))
    except OSError:
        return removed
    for job in jobs:
        path = os.path.join(jobs_dir, job)
        with contextlib.suppress(OSError):
            for drive in os.listdir(path):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(path, drive))
        with contextlib.suppress(OSError):
            os.rmdir(path)
            removed.append(path)
    return removed


def _databases(vol: Volume, open_paths: list[str]) -> list[DatabaseHint]:
    """Live databases among ``open_paths``, looked at through the volume's
    directory handle (``vspfs.hostfs``: the live view may be mounted over the
    backing directory's path)."""
    # never through a symlink, never blocking on a FIFO
    flags = os.O_RDONLY | hostfs.O_NOFOLLOW | hostfs.O_NONBLOCK | hostfs.O_CLOEXEC

    def exists(rel: str) -> bool:
        try:
            hostfs.lstat_at(vol.root_fd, rel or ".")
        except (OSError, ValueError):
            return False
        return True

    def head(rel: str) -> bytes:
        fd = hostfs.open_at(vol.root_fd, rel, flags)
        try:
            if not statmod.S_ISREG(hostfs.fstat(fd).st_mode):
                return b""
            return hostfs.pread(fd, 16, 0)
        finally:
            os.close(fd)

    try:
        return detect(open_paths, exists, head)
    except Exception:  # a warning aid must never break a job
        log.exception("looking for live databases on %s failed", vol.backing)
        return []


class JobManager:
    """The daemon's running (and recently finished) backup jobs, by id."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._jobs: dict[str, Job] = {}
        self._ended: dict[str, float] = {}  # id -> monotonic time it ended
        self._lock = threading.Lock()

    def _get(self, args: dict[str, Any]) -> Job:
        job_id = args.get("job")
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise UsageError(f"no backup job {job_id}: it ended, or it never started")
        return job

    def _expire(self) -> None:
        limit = time.monotonic() - KEEP_FINISHED
        for job_id in [j for j, t in self._ended.items() if t < limit]:
            self._ended.pop(job_id, None)
            self._jobs.pop(job_id, None)

    # -- requests

    def op_start(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run a job for as long as its client's connection stays open; answer with its report."""
        if self.daemon.stopping:
            raise DaemonNotRunning("the vspfs daemon is shutting down")
        job = Job(self, args)
        with self._lock:
            self._expire()
            if job.id in self._jobs:
                raise UsageError(f"backup job {job.id} exists already: use another id")
            self._jobs[job.id] = job
        log.info(
            "job %s: started for %s (busy file wait %g s, timeout %g s)",
            job.id,
            ", ".join(jv.name for jv in job.volumes),
            job.busy_file_wait,
            job.busy_file_timeout,
        )
        try:
            job.run()
        finally:
            with self._lock:
                self._ended[job.id] = time.monotonic()
        return job.report()

    def op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._get(args).report()

    def op_finish(self, args: dict[str, Any]) -> dict[str, Any]:
        """End a job (its command is done, or it was interrupted); wait for cleanup; its report."""
        job = self._get(args)
        reason = args.get("reason", FINISHED)
        if reason not in (FINISHED, INTERRUPTED):
            raise UsageError(f"request argument 'reason' must be {FINISHED} or {INTERRUPTED}")
        job.request_finish(reason)
        if not job.done.wait(FINISH_TIMEOUT):
            raise VspError(f"backup job {job.id} did not end within {FINISH_TIMEOUT:g} s: see the daemon log")
        return job.report()

    def stop_all(self) -> None:
        """Daemon shutdown: end every job and give each a moment to clean up itself."""
        with self._lock:
            running = [j for j in self._jobs.values() if not j.done.is_set()]
        for job in running:
            job.request_finish(DAEMON_STOPPING)
        deadline = time.monotonic() + STOP_TIMEOUT
        for job in running:
            job.done.wait(max(0.0, deadline - time.monotonic()))
