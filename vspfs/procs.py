"""The process tree, read from /proc (Linux; elsewhere every answer is empty).

Two places need it: a backup job stops everything its command started (a
shell does not pass signals on), and the FUSE adapter finds the fusermount3
helper it must reap after an unmount. On Windows, where "/proc" would be a
directory of the current drive, nothing is read: `vspfs backup` stops a
command's tree another way there (vspfs/backup.py, ``stop_command``).
"""

from __future__ import annotations

import os

from vspfs import winplatform


def parents() -> dict[int, list[int]]:
    """For every parent pid, its children's pids (a snapshot of the moment)."""
    out: dict[int, list[int]] = {}
    if winplatform.running_on_windows():
        return out
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                # the command name may hold spaces and parentheses: parse after the last ")"
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    return parents().get(pid, [])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children, grandchildren..."""
    tree = parents()
    out, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def argv(pid: int) -> list[bytes]:
    """The command line of ``pid`` ([] once it has exited or become a zombie, and on Windows)."""
    if winplatform.running_on_windows():
        return []
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a for a in f.read().split(b"\0") if a]
    except OSError:
        return []
