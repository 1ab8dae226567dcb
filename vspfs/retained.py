"""The retained area: how deleted, replaced and moved objects stay reachable.

A snapshot never copies a file that the live view deletes or replaces: the
inode is kept alive by a hard link ``<RETAINED_DIR_NAME>/<ino>`` at the root
of its volume (same filesystem, O(1)). Non-directories that are *moved* get
the same link, so a snapshot can find them by identity wherever they went.
Directories cannot be hard-linked: the volume holds an open fd to each moved
directory (an fd follows its directory), and a removed directory is renamed
into the area instead of being deleted, so its inode is never reused while a
snapshot may still name it.

Each entry records the snapshots that needed it (its *owners*); it is removed
when the last owner is destroyed. The live view hides the area and reports
link counts as if the retained links did not exist (``extra_links``).

The area is locked (``winplatform.try_lock_exclusive``: flock on POSIX)
while a volume is served: an area nobody holds was left by a daemon that
died, and ``remove_stale_area`` may delete it. (On Windows a directory
cannot carry a LockFile lock; docs/windows.md says what the area needs there.)

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

from vspfs import winplatform
from vspfs.cacheformat import RETAINED_DIR_NAME
from vspfs.errors import UsageError

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Entry:
    is_dir: bool
    owners: set[str] = field(default_factory=set)
    dir_fd: int = -1  # directories: an fd that follows the directory
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
                os.mkdir(RETAINED_DIR_NAME, 0o700, dir_fd=root_fd)
            except FileExistsError:
                pass
        self.fd = os.open(RETAINED_DIR_NAME, _DIR_FLAGS, dir_fd=root_fd)
        if not winplatform.try_lock_exclusive(self.fd):
            os.close(self.fd)
            raise UsageError(
                f"volume {volume_name} is already served by another vspfs daemon: "
                "stop that daemon or serve another directory"
            ) from None

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
            if entry.is_dir:
                return os.open(str(ino), _DIR_FLAGS, dir_fd=self.fd), None
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
        os.link(name, str(ino), src_dir_fd=dir_fd, dst_dir_fd=self.fd, follow_symlinks=False)
        with self._lock:
            self._entries[ino] = _Entry(is_dir=False, owners=set(owners), in_area=True, bytes=size)

    def keep_dir(self, ino: int, dir_fd: int, name: str, owners: set[str]) -> None:
        """Hold an fd on a directory before it is moved or replaced."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is not None:
                entry.owners |= owners
                return
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        if os.fstat(fd).st_ino != ino:
            os.close(fd)
            raise OSError(errno.EIO, "directory changed while it was being retained", name)
        with self._lock:
            self._entries[ino] = _Entry(is_dir=True, owners=set(owners), dir_fd=fd)

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
                        os.unlink(str(ino), dir_fd=self.fd)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        """Remove every entry and the area itself (the volume stops being served)."""
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            if entry.dir_fd >= 0:
                os.close(entry.dir_fd)
        _clear_dir(self.fd)
        os.close(self.fd)
        try:
            with _root_times_kept(self._root_fd):
                os.rmdir(RETAINED_DIR_NAME, dir_fd=self._root_fd)
        except OSError as exc:
            log.warning("could not remove the retained area: %s", exc)


@contextmanager
def _root_times_kept(root_fd: int) -> Iterator[None]:
    """Creating or removing the area must not show as a change of the
    volume root: put its atime and mtime back (ctime cannot be restored)."""
    st = os.fstat(root_fd)
    try:
        yield
    finally:
        try:
            os.utime(root_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            log.debug("could not restore the root's times: %s", exc)


def _clear_dir(fd: int) -> None:
    for name in os.listdir(fd):
        _remove_tree(fd, name)


def _remove_tree(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` without ever following a symlink."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not statmod.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        _clear_dir(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def area_is_stale(root_fd: int) -> bool | None:
    """True if the volume has a retained area nobody holds, None if it has none."""
    try:
        fd = os.open(RETAINED_DIR_NAME, _DIR_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    try:
        return winplatform.try_lock_exclusive(fd)
    finally:
        os.close(fd)


def remove_stale_area(root_fd: int, volume_name: str) -> bool:
    """Remove a retained area left by a daemon that died; never a held one.

    The lock is taken and kept while deleting, so a daemon starting at the
    same moment cannot adopt a half-deleted area.
    """
    try:
        fd = os.open(RETAINED_DIR_NAME, _DIR_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return False
    try:
        if not winplatform.try_lock_exclusive(fd):
            return False
        _clear_dir(fd)
        with _root_times_kept(root_fd):
            os.rmdir(RETAINED_DIR_NAME, dir_fd=root_fd)
        log.info("removed a stale retained area on %s", volume_name)
        return True
    finally:
        os.close(fd)
