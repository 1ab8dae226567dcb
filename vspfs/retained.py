"""The retained area: how deleted, replaced and moved objects stay reachable.

A snapshot never copies a file that the live view deletes or replaces: the
inode is kept alive under the name ``<RETAINED_DIR_NAME>/<ino>`` at the root
of its volume (same filesystem, O(1)). A file being unlinked is *renamed*
there (one atomic step that needs no hard links); a file that is replaced
or moved gets a hard link there, so a snapshot can find it by identity
wherever it went.
Directories cannot be hard-linked: the volume holds an open fd to each moved
directory (an fd follows its directory), and a removed directory is renamed
into the area instead of being deleted, so its inode is never reused while a
snapshot may still name it.

Each entry records the snapshots that needed it (its *owners*); it is removed
when the last owner is destroyed. The live view hides the area and reports
link counts as if the retained links did not exist (``extra_links``).

The area is locked (``winplatform.try_lock_exclusive``) while a volume is
served: an area nobody holds was left by a daemon that died, and
``remove_stale_area`` may delete it. On POSIX the lock is a flock on the
area's directory fd; where directories cannot be locked (Windows: LockFileEx
needs a file) it is held on the file ``.lock`` inside the area.

Where a held directory handle would stop the live volume from renaming that
directory's parents (Windows, ``hostfs.HOLDS_DIRECTORY_HANDLES`` False), a
moved directory is not held open: it is reopened by its file id when a
snapshot needs it (``hostfs.open_by_id``).

Lock: ``_lock`` guards the tables; it is taken after the volume's namespace
lock and never while waiting for anything else. An fd handed out by
``dup_location`` is a private duplicate, so destroying a snapshot can close
the table's fd while a reader still uses its copy.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as statmod
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vspfs import hostfs, winplatform
from vspfs.cacheformat import RETAINED_DIR_NAME
from vspfs.errors import UsageError

log = logging.getLogger(__name__)

#: the lock file of an area, where the area's directory cannot be locked itself
LOCK_NAME = ".lock"


@dataclass
class _Entry:
    is_dir: bool
    owners: set[str] = field(default_factory=set)
    dir_fd: int = -1  # directories: an fd that follows the directory (or -1: by file id)
    in_area: bool = False  # a link (or a removed directory) lives in the area
    bytes: int = 0


class RetainedArea:
    def __init__(self, root_fd: int, volume_name: str) -> None:
        self._root_fd = root_fd
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        remove_stale_area(root_fd, volume_name)
        with _root_times_kept(root_fd):
            try:
                hostfs.mkdir_at(root_fd, RETAINED_DIR_NAME, 0o700)
            except FileExistsError:
                pass
        self.fd = hostfs.open_dir_at(root_fd, RETAINED_DIR_NAME)
        lock_fd = _try_lock_area(self.fd)
        if lock_fd is None:
            os.close(self.fd)
            raise UsageError(
                f"volume {volume_name} is already served by another vspfs daemon: "
                "stop that daemon or serve another directory"
            ) from None
        self._lock_fd = lock_fd
        try:
            hostfs.hide(self.fd)
        except OSError as exc:
            log.debug("could not hide the retained area: %s", exc)

    # -- queries ---------------------------------------------------------------

    def extra_links(self, ino: int) -> int:
        """Links the area adds to an inode (hidden from every view)."""
        entry = self._entries.get(ino)
        return 1 if entry is not None and entry.in_area and not entry.is_dir else 0

    def __contains__(self, ino: int) -> bool:
        return ino in self._entries

    def dup_location(self, ino: int) -> tuple[int, str | None] | None:
        """Where a retained object is: (dir fd, name) for a link in the area,
        (fd, None) for a directory. The fd is a private duplicate the caller
        closes. None if the object is not retained."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is None:
                return None
            if entry.is_dir and entry.dir_fd >= 0:
                return os.dup(entry.dir_fd), None
            if entry.is_dir and entry.in_area:
                return hostfs.open_dir_at(self.fd, str(ino)), None
            if entry.is_dir:
                return _open_by_id(self.fd, ino), None
            return os.dup(self.fd), str(ino)

    def pinned_bytes(self, owner: str | None = None) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values() if owner is None or owner in e.owners)

    # -- changes (caller holds the volume's namespace lock) ---------------------

    def keep_file(self, ino: int, dir_fd: int, name: str, owners: set[str], size: int) -> None:
        """Hard-link a non-directory into the area before it is unlinked,
        replaced or moved."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is not None:
                entry.owners |= owners
                return
        hostfs.link_at(dir_fd, name, self.fd, str(ino))
        with self._lock:
            self._entries[ino] = _Entry(is_dir=False, owners=set(owners), in_area=True, bytes=size)

    def keep_dir(self, ino: int, dir_fd: int, name: str, owners: set[str]) -> None:
        """Hold an fd on a directory before it is moved or replaced (or,
        where handles are not held, remember it by file id)."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is not None:
                entry.owners |= owners
                return
        fd = -1
        if hostfs.open_by_id is None:
            fd = hostfs.open_dir_at(dir_fd, name)
            found = hostfs.fstat(fd).st_ino
        else:
            found = hostfs.lstat_at(dir_fd, name).st_ino
        if found != ino:
            if fd >= 0:
                os.close(fd)
            raise OSError(errno.EIO, "directory changed while it was being retained", name)
        with self._lock:
            self._entries[ino] = _Entry(is_dir=True, owners=set(owners), dir_fd=fd)

    def park_file(self, ino: int, dir_fd: int, name: str, owners: set[str], size: int) -> bool:
        """Move a non-directory that is being unlinked into the area: one
        rename instead of a link and an unlink (atomic, and it needs no hard
        links, which not every Windows file system has). False when the
        inode is already retained: the caller unlinks the name itself."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is not None:
                entry.owners |= owners
                return False
            # registered before the rename: a reader looks here only after
            # missing the name in its directory, i.e. after the rename
            self._entries[ino] = _Entry(is_dir=False, owners=set(owners), in_area=True, bytes=size)
        try:
            hostfs.rename_at(dir_fd, name, self.fd, str(ino), hostfs.RENAME_NOREPLACE)
        except BaseException:
            with self._lock:
                del self._entries[ino]
            raise
        return True

    def park_dir(self, ino: int, owners: set[str]) -> str:
        """Register an (empty) directory that is about to be parked in the
        area instead of removed; returns its name there. A parked directory
        is found by name, so it costs no open fd (a removal of a large tree
        during a backup must not run the daemon out of descriptors)."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is None:
                entry = self._entries[ino] = _Entry(is_dir=True)
            entry.owners |= owners
            entry.in_area = True
        return str(ino)

    def release_owner(self, owner: str, before_unlink: Callable[[int], None] | None = None) -> None:
        """Drop a destroyed snapshot; remove what no remaining snapshot needs.

        Removing a retained link changes the inode's ctime and link count, so
        ``before_unlink(ino)`` runs first, while the link still exists, to let
        the remaining snapshots preserve the metadata they still see."""
        with self._lock:
            victims = []
            for ino, entry in self._entries.items():
                if owner in entry.owners and len(entry.owners) == 1:
                    victims.append(ino)
                entry.owners.discard(owner)
        for ino in victims:
            entry = self._entries[ino]
            if before_unlink is not None and entry.in_area and not entry.is_dir:
                before_unlink(ino)
            with self._lock:
                del self._entries[ino]
            if entry.dir_fd >= 0:
                os.close(entry.dir_fd)
            if entry.in_area:
                try:
                    if entry.is_dir:
                        _remove_tree(self.fd, str(ino))
                    else:
                        hostfs.unlink_at(self.fd, str(ino))
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        """Remove every entry and the area itself (the volume stops being served)."""
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            if entry.dir_fd >= 0:
                os.close(entry.dir_fd)
        try:
            _clear_dir(self.fd)
            _drop_lock(self.fd, self._lock_fd)
        finally:
            os.close(self.fd)
        try:
            with _root_times_kept(self._root_fd):
                hostfs.rmdir_at(self._root_fd, RETAINED_DIR_NAME)
        except OSError as exc:
            log.warning("could not remove the retained area: %s", exc)


@contextmanager
def _root_times_kept(root_fd: int) -> Iterator[None]:
    """Creating or removing the area must not show as a change of the
    volume root: put its atime and mtime back (ctime cannot be restored)."""
    st = hostfs.fstat(root_fd)
    try:
        yield
    finally:
        try:
            hostfs.futimes(root_fd, st.st_atime_ns, st.st_mtime_ns)
        except OSError as exc:
            log.debug("could not restore the root's times: %s", exc)


def _clear_dir(fd: int) -> None:
    """Remove everything in the directory ``fd`` except an area's lock file."""
    for name in hostfs.listdir(fd):
        if name != LOCK_NAME:
            _remove_tree(fd, name)


def _remove_tree(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` without ever following a symlink."""
    st = hostfs.lstat_at(dir_fd, name)
    if not statmod.S_ISDIR(st.st_mode):
        hostfs.unlink_at(dir_fd, name)
        return
    fd = hostfs.open_dir_at(dir_fd, name)
    try:
        _clear_dir(fd)
    finally:
        os.close(fd)
    hostfs.rmdir_at(dir_fd, name)


def _open_by_id(any_fd: int, ino: int) -> int:
    """A moved directory, reopened by its file id (checked: ids are reused)."""
    assert hostfs.open_by_id is not None
    fd = hostfs.open_by_id(any_fd, ino)
    if hostfs.fstat(fd).st_ino != ino:
        os.close(fd)
        raise OSError(errno.ENOENT, "retained directory no longer exists", str(ino))
    return fd


def _try_lock_area(area_fd: int) -> int | None:
    """Lock an area; returns the fd that holds the lock (the area's own fd,
    or its lock file's), None if another process holds it."""
    if hostfs.HOLDS_DIRECTORY_HANDLES:
        return area_fd if winplatform.try_lock_exclusive(area_fd) else None
    flags = os.O_RDWR | os.O_CREAT | hostfs.O_NOFOLLOW | hostfs.O_CLOEXEC
    fd = hostfs.open_at(area_fd, LOCK_NAME, flags, 0o600)
    if winplatform.try_lock_exclusive(fd):
        return fd
    os.close(fd)
    return None


def _drop_lock(area_fd: int, lock_fd: int) -> None:
    """Before the area is removed: delete its lock file while still holding
    it (so nobody adopts the area in between), then let go."""
    if lock_fd == area_fd:
        return
    try:
        hostfs.unlink_at(area_fd, LOCK_NAME)
    finally:
        os.close(lock_fd)


def area_is_stale(root_fd: int) -> bool | None:
    """True if the volume has a retained area nobody holds, None if it has none."""
    try:
        fd = hostfs.open_dir_at(root_fd, RETAINED_DIR_NAME)
    except FileNotFoundError:
        return None
    try:
        lock_fd = _try_lock_area(fd)
        if lock_fd is not None and lock_fd != fd:
            os.close(lock_fd)
        return lock_fd is not None
    finally:
        os.close(fd)


def remove_stale_area(root_fd: int, volume_name: str) -> bool:
    """Remove a retained area left by a daemon that died; never a held one.

    The lock is taken and kept while deleting, so a daemon starting at the
    same moment cannot adopt a half-deleted area.
    """
    try:
        fd = hostfs.open_dir_at(root_fd, RETAINED_DIR_NAME)
    except FileNotFoundError:
        return False
    try:
        lock_fd = _try_lock_area(fd)
        if lock_fd is None:
            return False
        try:
            _clear_dir(fd)
        finally:
            _drop_lock(fd, lock_fd)
        with _root_times_kept(root_fd):
            hostfs.rmdir_at(root_fd, RETAINED_DIR_NAME)
        log.info("removed a stale retained area on %s", volume_name)
        return True
    finally:
        os.close(fd)
