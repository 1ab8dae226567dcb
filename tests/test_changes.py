"""`Snapshot.changes()`: what changed on the live volume since a snapshot (no mounts).

Every change goes through the live view (``Volume``), as it would through the
FUSE mount; the expectations are what an incremental backup needs to know:
paths created, modified, deleted and renamed since the snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vspfs.errors import SnapshotInvalid
from vspfs.provider import Provider
from vspfs.volume import Volume


@pytest.fixture
def vol(tmp_path: Path) -> Iterator[tuple[Provider, Volume]]:
    backing = tmp_path / "vol"
    backing.mkdir()
    provider = Provider(str(tmp_path / "state"))
    volume = provider.add_volume(str(backing), chunk_size=4096)
    try:
        yield provider, volume
    finally:
        provider.close()


def put(v: Volume, path: str, data: bytes) -> None:
    fh = v.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        v.write(fh, data, 0)
    finally:
        v.release(fh)


def pwrite(v: Volume, path: str, data: bytes, offset: int) -> None:
    fh = v.open(path, os.O_WRONLY)
    try:
        v.write(fh, data, offset)
    finally:
        v.release(fh)


def tree(v: Volume) -> None:
    for d in ("docs", "docs/old", "src", "src/pkg", "deep", "deep/a", "deep/a/b", "gone", "keep"):
        v.mkdir(d, 0o755)
    for f in (
        "docs/readme.txt",
        "docs/old/notes.txt",
        "src/main.py",
        "src/pkg/mod.py",
        "deep/a/b/leaf.bin",
        "gone/x",
        "keep/untouched",
        "keep/chmod-me",
        "keep/editor-save",
        "top.txt",
        "linked",
        "deleted.txt",
    ):
        put(v, f, f"content of {f}\n".encode() * 100)
    v.link("linked", "keep/other-name")
    v.symlink("top.txt", "sym")


def test_no_change_is_empty(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    tree(v)
    [snap] = provider.create_snapshot_set([v])
    assert snap.changes() == {"created": [], "modified": [], "deleted": [], "renamed": []}


def test_every_kind_of_change(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    tree(v)
    [snap] = provider.create_snapshot_set([v])
    pwrite(v, "deep/a/b/leaf.bin", b"CHANGED", 10)  # deep in unchanged directories
    pwrite(v, "linked", b"via one name", 0)  # hard link: both names are modified
    v.chmod("keep/chmod-me", 0o600)  # attributes only
    v.setxattr("top.txt", "user.tag", b"x")
    v.unlink("deleted.txt")
    v.rename("docs/readme.txt", "docs/README.md")  # rename in place
    v.rename("src/pkg", "pkg")  # directory moved up: one entry for the directory
    pwrite(v, "pkg/mod.py", b"edited after the move", 0)
    for name in os.listdir(os.path.join(v.backing, "gone")):
        v.unlink(f"gone/{name}")
    v.rmdir("gone")
    v.mkdir("fresh", 0o755)
    v.mkdir("fresh/sub", 0o755)
    put(v, "fresh/sub/new.txt", b"new")
    put(v, "created.txt", b"new file")
    v.rename("docs/old/notes.txt", "fresh/notes.txt")  # into a new directory
    put(v, "keep/editor-save.tmp", b"saved by an editor")  # written aside, renamed over
    v.rename("keep/editor-save.tmp", "keep/editor-save")

    got = snap.changes()
    assert got["created"] == ["created.txt", "fresh", "fresh/sub", "fresh/sub/new.txt"]
    assert got["modified"] == [
        "deep/a/b/leaf.bin",
        "keep/chmod-me",
        "keep/editor-save",
        "keep/other-name",
        "linked",
        "pkg/mod.py",
        "top.txt",
    ]
    assert got["deleted"] == ["deleted.txt", "gone", "gone/x"]
    assert got["renamed"] == [
        ("docs/old/notes.txt", "fresh/notes.txt"),
        ("docs/readme.txt", "docs/README.md"),
        ("src/pkg", "pkg"),
    ]
    # the untouched file and the unchanged directories are nowhere
    flat = {p for k in ("created", "modified", "deleted") for p in got[k]}
    assert "keep/untouched" not in flat and "src/main.py" not in flat and "sym" not in flat


def test_replaced_by_rename_over_is_modified(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    put(v, "config", b"old")
    [snap] = provider.create_snapshot_set([v])
    put(v, "config.new", b"new")  # created after the snapshot, then renamed over
    v.rename("config.new", "config")
    assert snap.changes() == {"created": [], "modified": ["config"], "deleted": [], "renamed": []}


def test_unlink_and_recreate_is_modified(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    put(v, "f", b"old")
    [snap] = provider.create_snapshot_set([v])
    v.unlink("f")
    put(v, "f", b"new")
    assert snap.changes()["modified"] == ["f"]


def test_created_then_deleted_is_nothing(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    v.mkdir("d", 0o755)
    [snap] = provider.create_snapshot_set([v])
    put(v, "d/tmp", b"short-lived")
    v.unlink("d/tmp")
    assert snap.changes() == {"created": [], "modified": [], "deleted": [], "renamed": []}


def test_two_snapshots_see_their_own_changes(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    put(v, "a", b"a")
    put(v, "b", b"b")
    [first] = provider.create_snapshot_set([v])
    pwrite(v, "a", b"A", 0)
    [second] = provider.create_snapshot_set([v])
    pwrite(v, "b", b"B", 0)
    assert first.changes()["modified"] == ["a", "b"]
    assert second.changes()["modified"] == ["b"]


def test_invalid_snapshot_refuses(vol: tuple[Provider, Volume]) -> None:
    provider, v = vol
    put(v, "a", b"a")
    [snap] = provider.create_snapshot_set([v])
    snap.invalidate("test")
    with pytest.raises(SnapshotInvalid):
        snap.changes()
