"""Concurrency tests of the engine: live writers against snapshot readers.

Every write stamps each chunk it covers with (file id, chunk number,
generation); generations come from one global counter, and each file has a
single writer, so the generations of one chunk grow with time. For each
snapshot the test records, per chunk, the last generation whose write had
*completed* when creation began (lo) and the last generation whose write had
*started* when creation returned (hi). A snapshot reader must then see, for
every chunk, a generation in [lo, hi] - never a newer one - and always the
same one (a snapshot never changes), whole chunks only (no torn chunk).
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vspfs.errors import VspError

CHUNK = 4096
NCHUNKS = 8
FILE_SIZE = CHUNK * NCHUNKS
_REC = struct.Struct("<4sIIQ")
_REC_SIZE = 32


def stamp(fid: int, chunk: int, gen: int) -> bytes:
    rec = _REC.pack(b"VSPT", fid, chunk, gen).ljust(_REC_SIZE, b".")
    return rec * (CHUNK // _REC_SIZE)


def decode(buf: bytes, fid: int, chunk: int) -> int:
    """The generation stamped in one chunk. ValueError "foreign" if any part
    of it is not a stamp of that file and chunk (bytes of another file, or
    garbage), "torn" if it mixes the stamps of several writes."""
    if len(buf) != CHUNK:
        raise ValueError(f"file {fid} chunk {chunk}: foreign: {len(buf)} bytes")
    gens = set()
    for off in range(0, CHUNK, _REC_SIZE):
        rec = buf[off : off + _REC_SIZE]
        magic, f, c, gen = _REC.unpack(rec[: _REC.size])
        if (magic, f, c) != (b"VSPT", fid, chunk) or rec[_REC.size :] != b"." * (_REC_SIZE - _REC.size):
            raise ValueError(f"file {fid} chunk {chunk}: foreign bytes at +{off}: {rec!r}")
        gens.add(gen)
    if len(gens) != 1:
        raise ValueError(f"file {fid} chunk {chunk}: torn: generations {sorted(gens)}")
    return gens.pop()


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: dict[tuple[int, int], int] = field(default_factory=dict)
    done: dict[tuple[int, int], int] = field(default_factory=dict)
    gens: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@dataclass
class Expect:
    snap: object
    lo: dict[tuple[int, int], int]
    hi: dict[tuple[int, int], int]
    seen: dict[tuple[int, int], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    reads: int = 0


class Rig:
    """A provider, one volume with stamped files, and the shared ledger."""

    def __init__(self, tmp: Path, nfiles: int) -> None:
        from vspfs.provider import Provider

        backing = tmp / "volume"
        backing.mkdir()
        self.provider = Provider(str(tmp / "state"))
        self.vol = self.provider.add_volume(str(backing), chunk_size=CHUNK)
        self.ledger = Ledger()
        self.nfiles = nfiles
        self.errors: list[str] = []
        for fid in range(nfiles):
            fh = self.vol.create(self.path(fid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self.vol.write(fh, b"".join(stamp(fid, c, 0) for c in range(NCHUNKS)), 0)
            self.vol.release(fh)
            for c in range(NCHUNKS):
                self.ledger.started[(fid, c)] = self.ledger.done[(fid, c)] = 0

    @staticmethod
    def path(fid: int) -> str:
        return f"/f{fid}"

    def write_once(self, fid: int, rng: random.Random, fh: int | None) -> None:
        a = rng.randrange(NCHUNKS)
        b = rng.randrange(a + 1, NCHUNKS + 1)
        led = self.ledger
        with led.lock:
            gen = next(led.gens)
            for c in range(a, b):
                led.started[(fid, c)] = gen
        data = b"".join(stamp(fid, c, gen) for c in range(a, b))
        if fh is None:
            one = self.vol.open(self.path(fid), os.O_WRONLY)
            try:
                self.vol.write(one, data, a * CHUNK)
            finally:
                self.vol.release(one)
        else:
            self.vol.write(fh, data, a * CHUNK)
        with led.lock:
            for c in range(a, b):
                led.done[(fid, c)] = gen

    def writer(self, fids: list[int], stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        handles = {fid: self.vol.open(self.path(fid), os.O_RDWR) for fid in fids}
        try:
            while not stop.is_set():
                fid = rng.choice(fids)
                self.write_once(fid, rng, handles[fid] if rng.random() < 0.5 else None)
        except Exception as exc:
            self.errors.append(f"writer on {fids}: {exc!r}")
        finally:
            for fh in handles.values():
                self.vol.release(fh)

    def take(self) -> Expect:
        with self.ledger.lock:
            lo = dict(self.ledger.done)
        [snap] = self.provider.create_snapshot_set([self.vol])
        with self.ledger.lock:
            hi = dict(self.ledger.started)
        return Expect(snap, lo, hi)

    def check_read(self, exp: Expect, fid: int, rng: random.Random) -> None:
        """Read one file of a snapshot in random pieces and check every chunk."""
        snap = exp.snap
        size = snap.getattr(self.path(fid)).size
        if size != FILE_SIZE:
            raise AssertionError(f"snapshot size of file {fid} is {size}, expected {FILE_SIZE}")
        fh = snap.open(self.path(fid))
        try:
            buf = bytearray()
            while len(buf) < FILE_SIZE + 1:
                n = rng.randrange(1, 3 * CHUNK)
                got = snap.read(fh, n, len(buf))
                if not got:
                    break
                buf += got
        finally:
            snap.release(fh)
        if len(buf) != FILE_SIZE:
            raise AssertionError(f"file {fid}: read {len(buf)} bytes from the snapshot, expected {FILE_SIZE}")
        for c in range(NCHUNKS):
            gen = decode(bytes(buf[c * CHUNK : (c + 1) * CHUNK]), fid, c)
            lo, hi = exp.lo[(fid, c)], exp.hi[(fid, c)]
            if not lo <= gen <= hi:
                newer = "newer than the snapshot" if gen > hi else "older than the snapshot"
                raise AssertionError(
                    f"file {fid} chunk {c}: generation {gen} is {newer} (expected {lo}..{hi})"
                )
            with exp.lock:
                first = exp.seen.setdefault((fid, c), gen)
            if first != gen:
                raise AssertionError(
                    f"file {fid} chunk {c}: the snapshot showed generation {first}, now {gen}"
                )

    def close(self) -> None:
        self.provider.close()


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator:
    rigs: list[Rig] = []

    def make(nfiles: int) -> Rig:
        rig = Rig(tmp_path, nfiles)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def _start(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_readers_never_see_post_snapshot_data(rig_factory) -> None:
    """Writers keep overwriting; snapshots come and go (up to three alive);
    readers read every alive snapshot again and again."""
    rig: Rig = rig_factory(8)
    stop = threading.Event()
    alive: list[Expect] = []
    alive_lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with alive_lock:
                if not alive:
                    exp = None
                else:
                    exp = rng.choice(alive)
                    exp.users += 1
            if exp is None:
                time.sleep(0.001)
                continue
            try:
                rig.check_read(exp, rng.randrange(rig.nfiles), rng)
                exp.reads += 1
            except Exception as exc:
                rig.errors.append(f"reader: {exc!r}")
                stop.set()
            finally:
                with alive_lock:
                    exp.users -= 1

    writers = [_start(rig.writer, [w, w + 4], stop, w) for w in range(4)]
    readers = [_start(reader, 100 + r) for r in range(3)]
    all_done: list[Expect] = []
    try:
        for _round in range(10):
            if stop.is_set():
                break
            exp = rig.take()
            all_done.append(exp)
            with alive_lock:
                alive.append(exp)
            time.sleep(0.25)
            if len(alive) >= 3:
                with alive_lock:
                    old = alive.pop(0)
                while True:
                    with alive_lock:
                        if old.users == 0:
                            break
                    time.sleep(0.001)
                rig.provider.destroy(old.snap)
    finally:
        stop.set()
        for t in writers + readers:
            t.join(30)
    assert not [t for t in writers + readers if t.is_alive()], "a thread hung"
    assert not rig.errors, "\n".join(rig.errors[:10])
    # one last, quiet pass over what is still alive
    rng = random.Random(7)
    for exp in alive:
        for fid in range(rig.nfiles):
            rig.check_read(exp, fid, rng)
    assert sum(e.reads for e in all_done) >= 20, "readers hardly ran: the test proved nothing"
    assert next(rig.ledger.gens) > 100, "writers hardly ran: the test proved nothing"


def test_writer_not_blocked_by_paused_snapshot_reader(rig_factory) -> None:
    """A snapshot read that stalls half-way (here: just before it copies a
    preserved chunk from the cache file) must not stall live changes."""
    rig: Rig = rig_factory(3)
    exp = rig.take()
    snap = exp.snap
    cache = snap.cache
    original = getattr(cache, "read_data", None)
    if original is None:
        pytest.skip("the cache file has no read_data(): a stalled read cannot be staged")
    rig.write_once(0, random.Random(1), None)  # some chunks of file 0 now come from the cache
    rig.write_once(0, random.Random(1), None)
    entered = threading.Event()
    release = threading.Event()

    def stalled(*args, **kwargs):
        entered.set()
        release.wait(60)
        return original(*args, **kwargs)

    cache.read_data = stalled
    result: list[object] = []

    def reader() -> None:
        try:
            rig.check_read(exp, 0, random.Random(2))
            result.append("ok")
        except Exception as exc:
            result.append(exc)

    t_reader = _start(reader)
    try:
        if not entered.wait(10):
            pytest.skip("the snapshot read never reached the cache file: a stall cannot be staged")
        done = threading.Event()
        failures: list[str] = []

        def live_changes() -> None:
            try:
                rng = random.Random(3)
                for _ in range(50):
                    rig.write_once(rng.randrange(3), rng, None)
                rig.vol.truncate(rig.path(1), CHUNK)
                rig.vol.rename(rig.path(2), "/moved")
                rig.vol.unlink("/moved")
                fh = rig.vol.create("/new", os.O_WRONLY | os.O_CREAT, 0o644)
                rig.vol.write(fh, b"x" * 10000, 0)
                rig.vol.release(fh)
            except Exception as exc:
                failures.append(repr(exc))
            finally:
                done.set()

        _start(live_changes)
        finished = done.wait(20)
    finally:
        release.set()
        t_reader.join(30)
        cache.read_data = original
    assert finished, "live writes stalled while a snapshot reader was paused"
    assert not failures, failures
    assert result == ["ok"], result
    # and the paused reader's snapshot is still exact afterwards
    for fid in range(3):
        rig.check_read(exp, fid, random.Random(fid))


def test_destroy_during_reads_never_yields_foreign_data(rig_factory) -> None:
    """Snapshots destroyed while readers are inside read(): a read may fail,
    but a read that returns must return bytes of the file it was asked for
    (a closed descriptor must never be read after its number was reused),
    and one that finished before destroy began must be exact."""
    rig: Rig = rig_factory(6)
    stop = threading.Event()
    writers = [_start(rig.writer, [w, w + 3], stop, w) for w in range(3)]
    problems: list[str] = []
    try:
        for rnd in range(12):
            exp = rig.take()
            destroying = threading.Event()
            quit_readers = threading.Event()

            def reader(
                seed: int,
                exp: Expect = exp,
                destroying: threading.Event = destroying,
                quit_readers: threading.Event = quit_readers,
                rnd: int = rnd,
            ) -> None:
                rng = random.Random(seed)
                while not quit_readers.is_set():
                    fid = rng.randrange(rig.nfiles)
                    try:
                        rig.check_read(exp, fid, rng)
                    except (OSError, VspError):
                        continue  # failing is allowed once destroy has begun
                    except (AssertionError, ValueError) as exc:
                        text = str(exc)
                        if "foreign" in text:
                            problems.append(f"round {rnd}: {text}")
                        elif not destroying.is_set():
                            problems.append(f"round {rnd} (before destroy): {text}")

            readers = [_start(reader, rnd * 10 + r) for r in range(3)]
            time.sleep(random.Random(rnd).uniform(0.0, 0.05))
            destroying.set()
            rig.provider.destroy(exp.snap)
            time.sleep(0.02)
            quit_readers.set()
            for t in readers:
                t.join(30)
            if problems:
                break
    finally:
        stop.set()
        for t in writers:
            t.join(30)
    assert not rig.errors, rig.errors[:5]
    assert not problems, "\n".join(problems[:10])


def test_first_change_of_a_file_races_its_readers(rig_factory) -> None:
    """The moment a file gets its first preserved chunk is the narrowest one
    for a reader (the index learns about the file then). Many files, each
    changed once per snapshot while readers read them all the time."""
    rig: Rig = rig_factory(48)
    rng = random.Random(11)
    for rnd in range(15):
        exp = rig.take()
        stop = threading.Event()

        def reader(seed: int, exp: Expect = exp, stop: threading.Event = stop) -> None:
            r = random.Random(seed)
            while not stop.is_set():
                try:
                    rig.check_read(exp, r.randrange(rig.nfiles), r)
                except Exception as exc:
                    rig.errors.append(f"reader: {exc!r}")
                    stop.set()

        readers = [_start(reader, rnd * 10 + i) for i in range(3)]
        order = list(range(rig.nfiles))
        rng.shuffle(order)
        for fid in order:
            if stop.is_set():
                break
            rig.write_once(fid, rng, None)
            time.sleep(0.0005)
        stop.set()
        for t in readers:
            t.join(30)
        assert not rig.errors, "\n".join(rig.errors[:10])
        for fid in range(rig.nfiles):
            rig.check_read(exp, fid, rng)
        rig.provider.destroy(exp.snap)


def test_namespace_changes_race_snapshot_walkers(tmp_path: Path) -> None:
    """Renames, unlinks, creations, appends and attribute changes run while
    readers walk a snapshot (listings, attributes, contents, xattrs): every
    walk must show exactly the tree captured when the snapshot was made.
    A fresh volume each round, so that every walk starts cold."""
    from tests.model import LiveView, ModelTree, SnapView, capture_attrs, compare_view
    from vspfs.provider import Provider

    provider = Provider(str(tmp_path / "state"))
    rng = random.Random(5)
    try:
        for rnd in range(5):
            backing = tmp_path / f"volume{rnd}"
            backing.mkdir()
            os.chmod(backing, 0o755)
            vol = provider.add_volume(str(backing), chunk_size=64)
            model = ModelTree(0o755)
            for d in range(4):
                model.mkdir(f"d{d}", 0o755)
                vol.mkdir(f"/d{d}", 0o755)
                for f in range(5):
                    path = f"d{d}/f{f}"
                    data = os.urandom(rng.randrange(0, 300))
                    model.write(model.create(path, 0o644, exclusive=True, trunc=False), 0, data)
                    fh = vol.create("/" + path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    vol.write(fh, data, 0)
                    vol.release(fh)
                    if f % 2:
                        model.setxattr(path, "user.k", b"v%d" % f)
                        vol.setxattr("/" + path, "user.k", b"v%d" % f)
            tree = model.snapshot()
            attrs = capture_attrs(LiveView(vol), tree)
            [snap] = provider.create_snapshot_set([vol])
            stop = threading.Event()
            errors: list[str] = []

            def walk(snap=snap, tree=tree, attrs=attrs) -> None:
                compare_view(SnapView(snap), tree, attrs=attrs, label="snapshot walked during changes")

            def walker(walk=walk, stop=stop, errors=errors) -> None:
                while not stop.is_set():
                    try:
                        walk()
                    except Exception as exc:
                        errors.append(repr(exc))
                        stop.set()

            walkers = [_start(walker) for _ in range(2)]
            try:
                for step in range(150):
                    if stop.is_set():
                        break
                    _random_change(vol, rng, step)
                    time.sleep(0.0005)
            finally:
                stop.set()
                for t in walkers:
                    t.join(30)
            assert not errors, errors[0]
            walk()
            provider.destroy(snap)
    finally:
        provider.close()


def _random_change(vol, rng: random.Random, step: int) -> None:
    d, f = rng.randrange(4), rng.randrange(5)
    path = f"/d{d}/f{f}"
    op = rng.randrange(8)
    try:
        if op == 0:
            vol.rename(path, f"/d{rng.randrange(4)}/f{rng.randrange(5)}")
        elif op == 1:
            vol.unlink(path)
        elif op == 2:
            fh = vol.create(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            vol.write(fh, b"+" * rng.randrange(1, 200), 0)
            vol.release(fh)
        elif op == 3:
            vol.rename(f"/d{d}", f"/x{step}")
            vol.rename(f"/x{step}", f"/d{d}")
        elif op == 4:
            vol.chmod(path, 0o600)
            vol.setxattr(path, "user.k", b"changed")
        elif op == 5:
            vol.truncate(path, rng.randrange(0, 100))
        elif op == 6:
            vol.link(path, f"/d{rng.randrange(4)}/h{step}")
        else:
            vol.mkdir(f"/d{d}/n{step}", 0o755)
            vol.rmdir(f"/d{d}/n{step}")
    except (FileNotFoundError, FileExistsError):
        pass


def test_concurrent_listings_of_one_snapshot_directory(rig_factory) -> None:
    """Two readers list the same snapshot directory at the same time (FUSE
    serves requests from several threads): each must get the whole listing."""
    rig: Rig = rig_factory(0)
    vol = rig.vol
    vol.mkdir("/d", 0o755)
    names = sorted(f"f{i}" for i in range(60))
    for n in names:
        vol.release(vol.create(f"/d/{n}", os.O_WRONLY | os.O_CREAT, 0o644))
    [snap] = rig.provider.create_snapshot_set([vol])
    wrong: list[int] = []

    def lister() -> None:
        for _ in range(300):
            got = sorted(n for n, _i, _t in snap.readdir("/d"))
            if got != names:
                wrong.append(len(got))

    threads = [_start(lister) for _ in range(3)]
    for t in threads:
        t.join(60)
    assert not wrong, (
        f"{len(wrong)} of 900 concurrent listings were wrong (entry counts {sorted(set(wrong))})"
    )


def test_root_listing_preserved_while_a_reader_lists_the_root(rig_factory) -> None:
    """A snapshot reader lists the volume root while the live view creates a
    file there (which preserves the root's listing first): the preserved
    listing, read from the same directory at the same moment, must be whole."""
    rig: Rig = rig_factory(0)
    vol = rig.vol
    names = [f"f{i}" for i in range(40)]
    for n in names:
        vol.release(vol.create(f"/{n}", os.O_WRONLY | os.O_CREAT, 0o644))
    wrong = []
    for r in range(40):
        [snap] = rig.provider.create_snapshot_set([vol])
        stop = threading.Event()

        def reader(snap=snap, stop=stop) -> None:
            while not stop.is_set():
                snap.readdir("/")

        t = _start(reader)
        try:
            time.sleep(0.001)
            vol.release(vol.create(f"/new{r}", os.O_WRONLY | os.O_CREAT, 0o644))
        except Exception as exc:
            raise AssertionError(f"snapshot {r}: the live create failed: {exc!r}") from exc
        finally:
            stop.set()
            t.join(30)
        got = sorted(n for n, _i, _t in snap.readdir("/"))
        expect = sorted([*names, *(f"new{i}" for i in range(r))])
        if got != expect:
            wrong.append(f"snapshot {r}: {len(got)} names instead of {len(expect)}")
        rig.provider.destroy(snap)
    assert not wrong, f"{len(wrong)} of 40 snapshots keep a wrong root listing: {wrong[:3]}"
