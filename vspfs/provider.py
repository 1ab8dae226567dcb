"""The provider: served volumes, the VSP rules, cache placement, snapshot sets.

The rules (DESIGN.md, from the VSP overview):

1. one snapshot per volume of a set, each with its own cache file;
2. a volume that contains a VSP cache file cannot be snapshotted;
3. a cache file cannot go on a volume that has, or is getting, a snapshot;
4. cache files live at the root of their cache volume and are removed when
   their snapshot is destroyed.

A "volume" here is a served backing directory, and a cache volume is a
directory whose root takes cache files. Anything below a served volume's
root *is on* that volume for the rules.

Lock: ``_lock`` serialises snapshot creation and destruction, so the set of
volumes "getting a snapshot" (rule 3) cannot change under a placement
decision. It is taken before any volume lock.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from vspfs import hostfs
from vspfs import portable_io as pio
from vspfs.cachefile import (
    DEFAULT_INITIAL_SIZE,
    CacheFile,
    find_cache_files,
    parse_size,
    remove_if_stale,
)
from vspfs.cacheformat import RETAINED_DIR_NAME
from vspfs.errors import CacheFileError, RuleViolation, UsageError
from vspfs.paths import inside as _inside
from vspfs.paths import real_path as _real
from vspfs.retained import remove_stale_area
from vspfs.snapshot import POLICIES, POLICY_INVALIDATE, Snapshot
from vspfs.volume import Volume

log = logging.getLogger(__name__)


def new_snapshot_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"removed": self.removed, "kept": self.kept}


class Provider:
    def __init__(
        self,
        state_dir: str,
        *,
        cache_volumes: list[str] | tuple[str, ...] = (),
        exclude: list[str] | tuple[str, ...] = (),
    ) -> None:
        _raise_fd_limit()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.state_dir = _real(state_dir)
        for cv in cache_volumes:
            if not os.path.isdir(cv):
                raise UsageError(f"cache volume {cv} is not a directory: create it or name another")
        self.cache_volumes = [_real(c) for c in cache_volumes]
        self.exclude = [_real(e) for e in exclude]
        self._volumes: list[Volume] = []
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.RLock()
        self._pending: set[str] = set()  # backing paths getting a snapshot right now

    # -- volumes -------------------------------------------------------------

    @property
    def volumes(self) -> list[Volume]:
        return list(self._volumes)

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        return dict(self._snapshots)

    def add_volume(self, backing: str, *, chunk_size: int | None = None) -> Volume:
        if not os.path.isdir(backing):
            raise UsageError(f"volume {backing} is not a directory: give the path of a directory to serve")
        real = _real(backing)
        for v in self._volumes:
            if _inside(real, v.backing) or _inside(v.backing, real):
                raise UsageError(
                    f"volume {backing} overlaps served volume {v.backing}: serve directories that do not nest"
                )
        kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
        vol = Volume(real, **kwargs)
        self._volumes.append(vol)
        return vol

    def find_volume(self, name: str) -> Volume:
        """A volume named by its backing path, its mount path, its id or its name."""
        real = _real(name) if os.path.isabs(name) or os.path.exists(name) else None
        for v in self._volumes:
            if real is not None and real in (v.backing, v.mountpoint and _real(v.mountpoint)):
                return v
        for v in self._volumes:
            if name in (v.volume_id, v.name):
                return v
        raise UsageError(f"{name} is not a served volume: see `vspfs list` for the served volumes")

    def remove_volume(self, vol: Volume) -> None:
        with self._lock:
            for snap in [s for s in self._snapshots.values() if s.volume is vol]:
                self.destroy(snap)
            self._volumes.remove(vol)
            vol.close()

    # -- rules -----------------------------------------------------------------

    def _volume_of(self, path: str) -> Volume | None:
        for v in self._volumes:
            if _inside(path, v.backing):
                return v
        return None

    def _busy_roots(self, extra: list[Volume]) -> list[str]:
        """Backing paths of volumes that have or are getting a snapshot (rule 3)."""
        roots = {s.volume.backing for s in self._snapshots.values()}
        roots |= self._pending
        roots |= {v.backing for v in extra}
        return sorted(roots)

    def _check_no_cache_file(self, vol: Volume) -> None:
        """Rule 2: a volume holding a VSP cache file cannot be snapshotted."""
        for s in self._snapshots.values():
            if _inside(_real_cache_dir(s), vol.backing) or s.cache.path.startswith(vol.root_path + os.sep):
                raise RuleViolation(
                    f"volume {vol.backing} holds the cache file of snapshot {s.id}: destroy that "
                    "snapshot first, or keep cache files off this volume with --cache-volume"
                )
        for name in find_cache_files(vol.root_path):
            raise RuleViolation(
                f"volume {vol.backing} contains the VSP cache file {os.path.join(vol.backing, name)}: "
                "a volume with a cache file cannot be snapshotted; if it is stale, run `vspfs cleanup`"
            )

    def _cache_dir_path(self, real: str) -> str:
        """Where the daemon writes a cache directory: through the backing fd of a
        served volume (never through its own mount)."""
        vol = self._volume_of(real)
        if vol is None:
            return real
        if real != vol.backing:
            raise RuleViolation(
                f"cache volume {real} lies inside served volume {vol.backing}: cache files live at the "
                "root of a volume; name the volume itself or a directory outside it"
            )
        return vol.root_path

    def _choose_cache_dir(self, vols: list[Volume], wanted: str | Sequence[str] | None) -> tuple[str, str]:
        """(display path, path to write through) of the cache volume for a set.

        ``wanted`` is one directory (it must be eligible), or a list (a job's
        own Cache File Volume List: the eligible one with most free space)."""
        busy = self._busy_roots(vols)
        if isinstance(wanted, (list, tuple)):
            for w in wanted:
                if not os.path.isdir(w):
                    raise UsageError(f"cache volume {w} is not a directory: create it or name another")
            candidates = [self._through_backing(_real(w)) for w in wanted]
            wanted = None if len(candidates) != 1 else candidates[0]
            if not candidates:
                raise UsageError("the cache file volume list is empty: name at least one directory")
        elif wanted is not None:
            candidates = [self._through_backing(_real(wanted))]
        elif self.cache_volumes:
            candidates = [self._through_backing(c) for c in self.cache_volumes]
        else:
            candidates = [v.backing for v in self._volumes] + [self.state_dir]
        eligible = []
        refused = []
        for cand in candidates:
            clash = next((b for b in busy if _inside(cand, b)), None)
            if clash is not None:
                refused.append(f"{cand} (on {clash}, which has or is getting a snapshot)")
                continue
            eligible.append(cand)
        if not eligible:
            why = "; ".join(refused) or "none configured"
            raise RuleViolation(
                f"no eligible cache volume for {', '.join(v.backing for v in vols)} ({why}): name a "
                "directory on a volume without a snapshot with --cache-volume DIR"
            )
        if wanted is not None and refused:
            raise RuleViolation(
                f"cache volume {refused[0]} cannot hold a cache file: name one on a volume without a snapshot"
            )

        def free(path: str) -> int:
            try:
                return pio.disk_usage(self._cache_dir_path(path)).available
            except (OSError, RuleViolation):
                return -1

        best = max(eligible, key=free)
        return best, self._cache_dir_path(best)

    # -- snapshots ---------------------------------------------------------------

    def create_snapshot_set(
        self,
        volumes: list[Volume],
        *,
        initial_size: int | str | Mapping[str, int | str | None] | None = None,
        max_size: int | str | Mapping[str, int | str | None] | None = None,
        policy: str = POLICY_INVALIDATE,
        cache_volume: str | Sequence[str] | None = None,
        hold_timeout: float = 30.0,
        under_hold: Callable[[], None] | None = None,
    ) -> list[Snapshot]:
        """Snapshot several volumes at one instant: new changes on all of them
        are held, in-flight ones drain, every snapshot is recorded, changes resume.

        Sizes may be one value for every volume or a mapping from volume id to
        value (per-volume cache sizing of backup jobs). ``under_hold`` runs
        while every change is held, just before the snapshots are recorded:
        a backup job re-checks its quiet period there, where no write can slip
        in between the check and the snapshot; whatever it raises undoes the
        set (cache files removed) and propagates."""
        if policy not in POLICIES:
            raise UsageError(f"unknown cache policy {policy!r}: use one of {', '.join(POLICIES)}")
        vols: list[Volume] = []
        for v in volumes:
            if v not in self._volumes:
                raise UsageError(f"{v.backing} is not served by this daemon")
            if v not in vols:
                vols.append(v)
        if not vols:
            raise UsageError("no volume to snapshot: name at least one served volume")
        with self._lock:
            for v in vols:
                for ex in self.exclude:
                    if _inside(v.backing, ex):
                        raise RuleViolation(
                            f"volume {v.backing} is in the VSP Volume Exclude List ({ex}): remove it "
                            "from the list or back it up without a snapshot"
                        )
                self._check_no_cache_file(v)
            display_dir, write_dir = self._choose_cache_dir(vols, cache_volume)
            self._pending |= {v.backing for v in vols}
            snaps: list[Snapshot] = []
            try:
                sid = new_snapshot_id()
                for v in vols:
                    snap_id = sid if len(vols) == 1 else f"{sid}-{v.name[:16]}"
                    snaps.append(
                        self._new_snapshot(
                            v,
                            snap_id,
                            write_dir,
                            display_dir,
                            _per_volume(initial_size, v),
                            _per_volume(max_size, v),
                            policy,
                        )
                    )
                with ExitStack() as stack:
                    for v in sorted(vols, key=lambda x: x.volume_id):
                        stack.enter_context(v.hold_changes(hold_timeout))
                    if under_hold is not None:
                        under_hold()
                    now = time.time_ns()
                    for s in snaps:
                        s.created_ns = now
                        s.open_for_write = s.volume.open_for_write()
                        s.volume.attach(s)
            except BaseException:
                for s in snaps:
                    s.cache.close(delete=True)
                raise
            finally:
                self._pending -= {v.backing for v in vols}
            for s in snaps:
                self._snapshots[s.id] = s
                log.info("snapshot %s of %s recorded (cache file %s)", s.id, s.volume.backing, s.cache.path)
            return snaps

    def _new_snapshot(
        self,
        vol: Volume,
        snap_id: str,
        write_dir: str,
        display_dir: str,
        initial_size: int | str | None,
        max_size: int | str | None,
        policy: str,
    ) -> Snapshot:
        st = hostfs.statvfs(vol.root_fd)
        volume_size = st.f_blocks * st.f_frsize
        initial = _size(initial_size, volume_size, DEFAULT_INITIAL_SIZE)
        maximum = _size(max_size, volume_size, None)
        if maximum is not None and initial > maximum:
            initial = maximum
        holder: list[Snapshot] = []

        def on_warning(percent: int, used: int, limit: int) -> None:
            if holder:
                holder[0].warn(f"cache file is {percent}% full ({used} of {limit} bytes)")

        kwargs: dict[str, object] = {"initial_size": initial, "on_warning": on_warning}
        if maximum is not None:
            kwargs["max_size"] = maximum
        cache = CacheFile.create(
            write_dir,
            snap_id,
            vol.volume_id,
            volume_path=vol.backing,
            chunk_size=vol.chunk_size,
            **kwargs,
        )
        cache.display_path = os.path.join(display_dir, os.path.basename(cache.path))
        snap = Snapshot(vol, snap_id, cache, policy=policy)
        holder.append(snap)
        return snap

    def get(self, snapshot_id: str) -> Snapshot:
        try:
            return self._snapshots[snapshot_id]
        except KeyError:
            raise UsageError(f"no snapshot {snapshot_id}: see `vspfs list` for the live snapshots") from None

    def destroy(self, snap: Snapshot) -> None:
        """Stop preserving, remove the cache file and the snapshot's retained entries."""
        with self._lock:
            if self._snapshots.get(snap.id) is not snap:
                return
            del self._snapshots[snap.id]
            snap.volume.detach(snap)
            snap.close()
            snap.cache.close(delete=True)
            snap.volume.forget_snapshot(snap)
            log.info("snapshot %s destroyed, cache file removed", snap.id)

    # -- cleanup -------------------------------------------------------------------

    def cleanup(self, paths: list[str] | None = None) -> CleanupReport:
        """Remove stale cache files and retained areas (their owner died);
        never a live one, never a file that is not a vspfs cache file."""
        report = CleanupReport()
        dirs: dict[str, str] = {}
        if paths:
            for p in paths:
                if not os.path.isdir(p):
                    raise UsageError(f"{p} is not a directory: name a volume or cache volume to clean")
                real = _real(p)
                vol = self._volume_of(real)
                dirs[real] = vol.root_path if vol is not None and vol.backing == real else real
        else:
            dirs[self.state_dir] = self.state_dir
            for c in self.cache_volumes:
                dirs[c] = c
            for v in self._volumes:
                dirs[v.backing] = v.root_path
        for real, where in dirs.items():
            cleanup_directory(real, where, report)
        return report

    def close(self) -> None:
        with self._lock:
            for snap in list(self._snapshots.values()):
                try:
                    self.destroy(snap)
                except Exception as exc:  # keep going: every other snapshot must still go
                    log.error("could not destroy snapshot %s: %s", snap.id, exc)
            for vol in self._volumes:
                vol.close()
            self._volumes.clear()

    def _through_backing(self, path: str) -> str:
        """A cache-volume path named through a live view (``/mnt/data/x`` where
        /mnt/data shows backing /srv/data) as the backing path (``/srv/data/x``),
        so that the VSP rules see which volume it is on and the daemon never
        writes a cache file through its own mount."""
        for v in self._volumes:
            mp = v.mountpoint and _real(v.mountpoint)
            if mp and mp != v.backing and _inside(path, mp):
                return v.backing + path[len(mp) :]
        return path


def cleanup_directory(display: str, where: str, report: CleanupReport) -> None:
    """Remove stale vspfs leftovers at the root of one directory."""
    try:
        names = find_cache_files(where)
    except OSError as exc:
        report.kept.append({"path": display, "reason": str(exc)})
        return
    for name in names:
        path = os.path.join(where, name)
        shown = os.path.join(display, name)
        try:
            if remove_if_stale(path):
                report.removed.append(shown)
            else:
                report.kept.append({"path": shown, "reason": "in use by a running vspfs daemon"})
        except CacheFileError as exc:
            report.kept.append({"path": shown, "reason": f"not removed: {exc}"})
        except OSError as exc:
            report.kept.append({"path": shown, "reason": f"not removed: {exc.strerror or exc}"})
    try:
        fd = hostfs.open_dir(where)
    except OSError:
        return
    try:
        if remove_stale_area(fd, display):
            report.removed.append(os.path.join(display, RETAINED_DIR_NAME))
    finally:
        os.close(fd)


def _real_cache_dir(snap: Snapshot) -> str:
    return os.path.dirname(getattr(snap.cache, "display_path", snap.cache.path))


def _per_volume(value: int | str | Mapping[str, int | str | None] | None, vol: Volume) -> int | str | None:
    """One volume's size from a single value or a mapping keyed by volume id."""
    if isinstance(value, Mapping):
        return value.get(vol.volume_id)
    return value


def _size(value: int | str | None, volume_size: int, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    return parse_size(value, volume_size)


def _raise_fd_limit() -> None:
    """Moved snapshot-time directories are followed by an open fd each, and
    every mount and open file costs more: use the hard limit, not the soft one.
    (Windows has no such limit to raise; the CRT allows 8192 fds.)"""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
