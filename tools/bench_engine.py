#!/usr/bin/env python3
"""Engine benchmark (no mounts): what copy-on-write costs, measured against
plain I/O on the same backing directory in the same run.

Every number is the median of ``--repeat`` runs (default 3). Baselines are
plain ``os.pwrite``/``os.pread`` calls on a plain fd, with the same file, the
same sizes and the same block size (128 KiB, what FUSE sends with big_writes).
Caches cannot be dropped without root, so every run is *warm*: the data is in
the page cache and ``os.sync()`` runs (untimed) before each timed pass, so a
baseline pass and a measured pass start from the same state (no dirty pages
left by the previous pass).

Rows:

- writes through ``Volume.write``: first writes to snapshot-time chunks with
  one active snapshot (each write copies its chunks to the cache file), later
  writes to the same (already preserved) chunks, and writes with no snapshot;
- ``Provider.create_snapshot_set`` time with a small and a large file count
  (it must not depend on the number of files);
- ``Snapshot.read`` of a changed file (all chunks from the cache file) against
  an unchanged one (all from the live file), and unchanged against plain pread;
- ``ChunkIndex`` memory per preserved chunk (tracemalloc and
  ``ChunkIndex.memory_bytes()``), and the growth of a snapshot's index and
  metadata structures while untouched files are read (must be none).

Usage::

    python tools/bench_engine.py                 # 256 MiB files, 10k/100k files, 1M chunks
    python tools/bench_engine.py --size 1G --dir /some/fs
    python tools/bench_engine.py --quick         # tiny sizes: checks that it runs
    python tools/bench_engine.py --profile       # adds cProfile top entries per I/O phase

Prints a markdown table: metric | vspfs | baseline | ratio | target | met?
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Measure the checkout this script is in, not whatever an editable install
# last pointed at (a CI clone's `pip install -e` redirects the global one).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vspfs.chunkindex import ChunkIndex
from vspfs.provider import Provider
from vspfs.snapshot import Snapshot
from vspfs.volume import Volume

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

#: metric names, in table order (the smoke test checks that every one is printed)
ROWS = (
    "write: first write to snapshot-time chunks (COW, 1 snapshot)",
    "write: later writes to preserved chunks (1 snapshot)",
    "write: no snapshot (pass-through)",
    "create_snapshot_set: large vs small file count",
    "snapshot read: changed file (cache) vs unchanged (live)",
    "snapshot read: unchanged file vs plain pread",
    "index memory per preserved chunk, sequential (tracemalloc)",
    "index memory per preserved chunk, sequential (memory_bytes)",
    "index memory per preserved chunk, scattered 1 in 16 (tracemalloc)",
    "index/meta growth per untouched file read",
)


@dataclass
class Config:
    size: int
    block: int
    repeat: int
    files_small: int
    files_large: int
    index_chunks: int
    untouched: int
    profile: bool


@dataclass
class Row:
    metric: str
    vspfs: str
    baseline: str
    ratio: str
    target: str
    met: str


def parse_size(text: str) -> int:
    units = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units and not t[-1:].isdigit() else ""
    return int(float(t[: len(t) - len(unit)]) * units[unit])


def human(n: float) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000:g}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000:g}k"
    return f"{n:g}"


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


# -- machine -----------------------------------------------------------------------


def fs_type(path: str) -> str:
    """Filesystem type of the mount that holds ``path`` (Linux), else 'unknown'."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def mem_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine(where: str, load_start: str) -> list[str]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return [
        f"- nproc: {cpus}; memory: {mem_total()}; temp dir filesystem: {fs_type(where)}",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()} "
        f"({platform.machine()})",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; 1-min load average {load_start} at start, "
        f"{load_average()} at end",
    ]


def load_average() -> str:
    """1-minute load average: other work on the machine shows up in the timings."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


# -- helpers -------------------------------------------------------------------------


def fill_file(path: str, size: int, block: int, seed: int) -> None:
    """Create a file of ``size`` bytes with incompressible data (page cache warm)."""
    rnd = random.Random(seed)
    chunk = rnd.randbytes(block)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for off in range(0, size, block):
            os.pwrite(fd, chunk[: min(block, size - off)], off)
    finally:
        os.close(fd)


def write_pass(write: Callable[[int, bytes, int], int], fh: int, data: bytes, size: int) -> float:
    block = len(data)
    t0 = time.perf_counter()
    for off in range(0, size, block):
        write(fh, data, off)
    return time.perf_counter() - t0


def read_pass(read: Callable[[int, int, int], bytes], fh: int, size: int, block: int) -> float:
    t0 = time.perf_counter()
    total = 0
    for off in range(0, size, block):
        total += len(read(fh, block, off))
    elapsed = time.perf_counter() - t0
    if total != size:
        raise RuntimeError(f"read {total} bytes, expected {size}")
    return elapsed


@contextmanager
def plain_fd(path: str, flags: int) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def vol_handle(vol: Volume, rel: str, flags: int) -> Iterator[int]:
    fh = vol.open(rel, flags)
    try:
        yield fh
    finally:
        vol.release(fh)


@contextmanager
def snap_handle(snap: Snapshot, rel: str) -> Iterator[int]:
    fh = snap.open(rel)
    try:
        yield fh
    finally:
        snap.release(fh)


class Profiles:
    """cProfile of one run of each I/O phase (after the timed runs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.sections: list[tuple[str, str]] = []

    def run(self, title: str, fn: Callable[[], object]) -> None:
        if not self.enabled:
            return
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.strip_dirs().sort_stats("tottime").print_stats(12)
        self.sections.append((title, out.getvalue().strip()))


# -- benchmarks ----------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, root: str) -> None:
        self.cfg = cfg
        self.root = root
        self.backing = os.path.join(root, "volume")
        self.cache_dir = os.path.join(root, "cache")
        os.makedirs(self.backing)
        os.makedirs(self.cache_dir)
        self.provider = Provider(os.path.join(root, "state"), cache_volumes=[self.cache_dir])
        self.vol = self.provider.add_volume(self.backing)
        self.rows: list[Row] = []
        self.profiles = Profiles(cfg.profile)

    def close(self) -> None:
        self.provider.close()

    def snapshot(self) -> Snapshot:
        return self.provider.create_snapshot_set([self.vol])[0]

    def destroy_all(self) -> None:
        for snap in list(self.provider.snapshots.values()):
            self.provider.destroy(snap)

    def add(self, *cells: str) -> None:
        self.rows.append(Row(*cells))

    # writes ----------------------------------------------------------------------

    def bench_writes(self) -> None:
        cfg = self.cfg
        rel = "writes.bin"
        path = os.path.join(self.backing, rel)
        fill_file(path, cfg.size, cfg.block, seed=1)
        data = random.Random(2).randbytes(cfg.block)
        # each measured pass is paired with a baseline pass on the same file run
        # just before it, from the same state (cached, clean after os.sync())
        runs: dict[str, list[tuple[float, float]]] = {"first": [], "later": [], "none": []}

        def plain() -> float:
            os.sync()
            with plain_fd(path, os.O_WRONLY) as fd:
                return write_pass(os.pwrite, fd, data, cfg.size)

        def measured(fh: int) -> float:
            os.sync()
            return write_pass(self.vol.write, fh, data, cfg.size)

        expected = (cfg.size + self.vol.chunk_size - 1) // self.vol.chunk_size
        for _ in range(cfg.repeat):
            snap = self.snapshot()
            with vol_handle(self.vol, rel, os.O_WRONLY) as fh:
                base = plain()
                runs["first"].append((base, measured(fh)))
                if snap.index.count != expected:
                    raise RuntimeError(f"{snap.index.count} chunks preserved, expected {expected}")
                base = plain()  # bypasses the snapshot, harmless: every chunk is preserved
                runs["later"].append((base, measured(fh)))
            self.destroy_all()
            with vol_handle(self.vol, rel, os.O_WRONLY) as fh:
                base = plain()
                runs["none"].append((base, measured(fh)))
        for name, key, target in (
            (ROWS[0], "first", 0.3),
            (ROWS[1], "later", 0.9),
            (ROWS[2], "none", 0.95),
        ):
            pairs = runs[key]
            base_speed = mbps(cfg.size, median([b for b, _ in pairs]))
            speed = mbps(cfg.size, median([t for _, t in pairs]))
            ratio = median([b / t for b, t in pairs])
            self.add(
                name,
                f"{speed:,.0f} MiB/s",
                f"{base_speed:,.0f} MiB/s",
                f"{ratio:.2f}x",
                f">= {target:g}x",
                verdict(ratio >= target),
            )

        if self.profiles.enabled:
            os.sync()
            with plain_fd(path, os.O_WRONLY) as fd:
                self.profiles.run(
                    "plain os.pwrite (baseline)", lambda: write_pass(os.pwrite, fd, data, cfg.size)
                )
            self.snapshot()
            with vol_handle(self.vol, rel, os.O_WRONLY) as fh:
                os.sync()
                self.profiles.run(
                    "Volume.write, first writes (COW)", lambda: write_pass(self.vol.write, fh, data, cfg.size)
                )
                os.sync()
                self.profiles.run(
                    "Volume.write, later writes (preserved chunks)",
                    lambda: write_pass(self.vol.write, fh, data, cfg.size),
                )
            self.destroy_all()
            with vol_handle(self.vol, rel, os.O_WRONLY) as fh:
                os.sync()
                self.profiles.run(
                    "Volume.write, no snapshot", lambda: write_pass(self.vol.write, fh, data, cfg.size)
                )
        os.unlink(path)
        os.sync()

    # snapshot creation ---------------------------------------------------------------

    def make_tree(self, start: int, stop: int) -> None:
        """Files tree/dNNNN/fNNNNNNN (1000 per directory); the first
        ``untouched`` files hold 100 bytes, the others are empty."""
        payload = b"x" * 100
        for i in range(start, stop):
            d = os.path.join(self.backing, "tree", f"d{i // 1000:04d}")
            if i % 1000 == 0 or i == start:
                os.makedirs(d, exist_ok=True)
            fd = os.open(os.path.join(d, f"f{i:07d}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if i < self.cfg.untouched:
                    os.write(fd, payload)
            finally:
                os.close(fd)

    def time_creation(self) -> float:
        runs = []
        for _ in range(self.cfg.repeat):
            os.sync()
            t0 = time.perf_counter()
            self.snapshot()
            runs.append(time.perf_counter() - t0)
            self.destroy_all()
        return median(runs)

    def bench_creation(self) -> None:
        cfg = self.cfg
        self.make_tree(0, cfg.files_small)
        self.snapshot()  # warm-up: first cache file in the directory, imports
        self.destroy_all()
        small = self.time_creation()
        self.bench_untouched()
        self.make_tree(cfg.files_small, cfg.files_large)
        large = self.time_creation()
        ratio = large / small
        self.add(
            ROWS[3],
            f"{large * 1e3:.2f} ms ({human(cfg.files_large)} files)",
            f"{small * 1e3:.2f} ms ({human(cfg.files_small)} files)",
            f"{ratio:.2f}x",
            "<= 1.5x (flat)",
            verdict(ratio <= 1.5),
        )
        shutil.rmtree(os.path.join(self.backing, "tree"))
        os.sync()

    def bench_untouched(self) -> None:
        """A snapshot, then every untouched file read through it: its index and
        metadata structures must not grow."""
        cfg = self.cfg
        snap = self.snapshot()

        def measure() -> tuple[int, dict[str, int]]:
            return snap.index.memory_bytes(), {**snap.changed_inodes(), "chunks": snap.index.count}

        bytes0, counts0 = measure()
        dirs = sorted(snap.readdir("tree"))
        seen = 0
        for name, _ino, _ftype in dirs:
            for fname, _fino, _ft in sorted(snap.readdir(f"tree/{name}")):
                p = f"tree/{name}/{fname}"
                snap.getattr(p)
                with snap_handle(snap, p) as fh:
                    if len(snap.read(fh, cfg.block, 0)) != 100:
                        raise RuntimeError(f"{p}: unexpected size in the snapshot")
                seen += 1
        bytes1, counts1 = measure()
        self.destroy_all()
        if seen != cfg.untouched:
            raise RuntimeError(f"read {seen} files, expected {cfg.untouched}")
        growth = bytes1 - bytes0
        grew = {k: counts1[k] - counts0[k] for k in counts0 if counts1[k] != counts0[k]}
        per_file = growth / seen
        self.add(
            ROWS[9],
            f"{per_file:g} B/file ({human(seen)} files; entries added: {grew or 'none'})",
            "n/a",
            "n/a",
            "0 B",
            verdict(growth == 0 and not grew),
        )

    # snapshot reads ------------------------------------------------------------------

    def bench_reads(self) -> None:
        cfg = self.cfg
        changed, unchanged = "changed.bin", "unchanged.bin"
        fill_file(os.path.join(self.backing, changed), cfg.size, cfg.block, seed=3)
        fill_file(os.path.join(self.backing, unchanged), cfg.size, cfg.block, seed=4)
        snap = self.snapshot()
        data = random.Random(5).randbytes(cfg.block)
        with vol_handle(self.vol, changed, os.O_WRONLY) as fh:
            write_pass(self.vol.write, fh, data, cfg.size)
        os.sync()
        with (
            snap_handle(snap, changed) as cfh,
            snap_handle(snap, unchanged) as ufh,
            plain_fd(os.path.join(self.backing, unchanged), os.O_RDONLY) as pfd,
        ):
            # one untimed pass each: everything is cached before timing
            read_pass(snap.read, cfh, cfg.size, cfg.block)
            read_pass(snap.read, ufh, cfg.size, cfg.block)
            read_pass(os.pread, pfd, cfg.size, cfg.block)
            t_changed, t_unchanged, t_plain = [], [], []
            for _ in range(cfg.repeat):
                t_plain.append(read_pass(os.pread, pfd, cfg.size, cfg.block))
                t_unchanged.append(read_pass(snap.read, ufh, cfg.size, cfg.block))
                t_changed.append(read_pass(snap.read, cfh, cfg.size, cfg.block))
            self.profiles.run(
                "plain os.pread (baseline)", lambda: read_pass(os.pread, pfd, cfg.size, cfg.block)
            )
            self.profiles.run(
                "Snapshot.read, changed file (cache)", lambda: read_pass(snap.read, cfh, cfg.size, cfg.block)
            )
            self.profiles.run(
                "Snapshot.read, unchanged file (live)", lambda: read_pass(snap.read, ufh, cfg.size, cfg.block)
            )
        # the changed file reads back its snapshot-time content
        with snap_handle(snap, changed) as cfh:
            head = snap.read(cfh, cfg.block, 0)
        if head != random.Random(3).randbytes(cfg.block)[: len(head)]:
            raise RuntimeError("snapshot read of the changed file returned post-snapshot data")
        self.destroy_all()
        c, u, p = (mbps(cfg.size, median(t)) for t in (t_changed, t_unchanged, t_plain))
        r_cu = median([tu / tc for tc, tu in zip(t_changed, t_unchanged, strict=True)])
        r_up = median([tp / tu for tu, tp in zip(t_unchanged, t_plain, strict=True)])
        self.add(ROWS[4], f"{c:,.0f} MiB/s", f"{u:,.0f} MiB/s", f"{r_cu:.2f}x", "none set", "n/a")
        self.add(ROWS[5], f"{u:,.0f} MiB/s", f"{p:,.0f} MiB/s", f"{r_up:.2f}x", "none set", "n/a")
        for name in (changed, unchanged):
            os.unlink(os.path.join(self.backing, name))
        os.sync()

    # index memory --------------------------------------------------------------------

    def bench_index(self) -> None:
        n = self.cfg.index_chunks
        per_file = 1024
        files = -(-n // per_file)
        base_offset = 4096
        stride = self.vol.chunk_size + 64  # a chunk record: data plus a small header

        def sequential(idx: ChunkIndex) -> None:
            for k in range(n):
                f, chunk = divmod(k, per_file)
                idx.put(1_000_000 + f * 7919, chunk, base_offset + k * stride)

        rnd = random.Random(6)
        span = 16 * n  # a file 16 times larger than what changed: 1 TiB for 1M chunks
        picks = rnd.sample(range(span), n)

        def scattered(idx: ChunkIndex) -> None:
            for k, chunk in enumerate(picks):
                idx.put(2_000_003, chunk, base_offset + k * stride)

        results = {}
        for label, fill in (("sequential", sequential), ("scattered", scattered)):
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            idx = ChunkIndex()
            fill(idx)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            results[label] = (idx.count, traced, idx.memory_bytes())
            del idx
        count, traced, reported = results["sequential"]
        self.add(
            ROWS[6],
            f"{traced / count:.1f} B ({count:,} chunks, {files:,} files x {per_file:,})",
            "n/a",
            "n/a",
            "<= 32 B",
            verdict(traced / count <= 32),
        )
        self.add(
            ROWS[7],
            f"{reported / count:.1f} B ({count:,} chunks)",
            "n/a",
            "n/a",
            "<= 32 B",
            verdict(reported / count <= 32),
        )
        count, traced, reported = results["scattered"]
        self.add(
            ROWS[8],
            f"{traced / count:.1f} B ({count:,} random chunks of a {span * self.vol.chunk_size / GiB:,.0f} "
            f"GiB file; memory_bytes {reported / count:.1f} B)",
            "n/a",
            "n/a",
            "<= 32 B",
            verdict(traced / count <= 32),
        )

    # output ----------------------------------------------------------------------------

    def table(self) -> str:
        order = {name: i for i, name in enumerate(ROWS)}
        rows = sorted(self.rows, key=lambda r: order[r.metric])
        lines = ["| metric | vspfs | baseline | ratio | target | met? |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r.metric} | {r.vspfs} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |" for r in rows
        ]
        return "\n".join(lines)


def config_from(args: argparse.Namespace) -> Config:
    if args.quick:
        cfg = Config(
            size=4 * MiB,
            block=128 * KiB,
            repeat=3,
            files_small=100,
            files_large=1000,
            index_chunks=1 << 14,
            untouched=100,
            profile=args.profile,
        )
    else:
        cfg = Config(
            size=256 * MiB,
            block=128 * KiB,
            repeat=3,
            files_small=10_000,
            files_large=100_000,
            index_chunks=1 << 20,
            untouched=10_000,
            profile=args.profile,
        )
    if args.size is not None:
        cfg.size = parse_size(args.size)
    if args.block is not None:
        cfg.block = parse_size(args.block)
    if args.repeat is not None:
        cfg.repeat = args.repeat
    if cfg.size <= 0 or cfg.block <= 0 or cfg.size % cfg.block or cfg.repeat < 1:
        raise SystemExit("bench_engine: --size must be a positive multiple of --block, --repeat >= 1")
    cfg.untouched = cfg.files_small  # every file of the small tree is read as "untouched"
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", help="file size for the I/O rows (default 256M; e.g. 64M, 1G)")
    parser.add_argument("--block", help="I/O block size (default 128K, what FUSE sends)")
    parser.add_argument("--repeat", type=int, help="runs per measurement, the median is kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the benchmark runs")
    parser.add_argument("--profile", action="store_true", help="print cProfile top entries per I/O phase")
    parser.add_argument("--dir", help="where to create the temporary volume (default: the system temp dir)")
    args = parser.parse_args(argv)
    cfg = config_from(args)

    load_start = load_average()
    root = tempfile.mkdtemp(prefix="vspfs-bench-", dir=args.dir)
    bench = Bench(cfg, root)
    try:
        bench.bench_writes()
        bench.bench_creation()
        bench.bench_reads()
        bench.bench_index()
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)

    print("# vspfs engine benchmark (no mounts)")
    print()
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python tools/bench_engine.py {shown}".strip()
    print(f"- command: `{command}`")
    for line in machine(args.dir or tempfile.gettempdir(), load_start):
        print(line)
    print(
        f"- file size {cfg.size // MiB} MiB, block {cfg.block // KiB} KiB, chunk "
        f"{bench.vol.chunk_size // KiB} KiB, median of {cfg.repeat} warm runs"
    )
    print()
    print(bench.table())
    for title, text in bench.profiles.sections:
        print()
        print(f"## profile: {title}")
        print()
        print("```")
        print(text)
        print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
