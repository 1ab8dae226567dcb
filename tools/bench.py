#!/usr/bin/env python3
"""Mount benchmark: the live view and virtual drives of a real `vspfs serve`,
against bindfs over the same data and against direct access to the backing
directory, measured in one run.

Everything goes through the kernel as an application sees it: the daemon is a
separate process (``python -m vspfs.cli serve BACKING=LIVE``) on a private
socket and state directory; bindfs (``bindfs -f BACKING MNT``, its defaults
otherwise) is another; this process only reads and writes files, runs
``ls``/``tar`` and sends CLI or control-channel requests. It never serves a
mount, so it may use them all.

Rows (targets from issue 4):

- virtual drive, sequential read of an unchanged file, cold (page cache
  dropped) against bindfs, and warm re-read against a direct page-cache read of
  the backing file;
- a fully changed file (overwritten through the live view after the snapshot,
  so every byte comes from the cache file), cold, against the unchanged one;
- ``ls -lR`` (an lstat of every file) and ``tar`` of the small-file tree from a
  virtual drive against bindfs, each on a freshly mounted drive / bindfs (no
  FUSE-level caches) over a backing tree in the page cache;
- live view without snapshot: sequential write of a new file (1 MiB blocks,
  fsync at the end, like ``dd bs=1M conv=fsync``) against the same writes
  straight into the backing directory; sequential read, cold and with the
  backing file cached, against bindfs;
- live view with a snapshot: first overwrite of a snapshot-time file (every
  chunk copied to the cache file first) and later overwrites, against the same
  overwrite with no snapshot (page cache: no fsync, ``sync`` before each pass);
- a virtual drive read while another process overwrites the same file through
  the live view as fast as it can, against the same read with no writer;
- ``vspfs snapshot create VOLUME --json`` with the volume holding ``--create-files``
  files: the CLI round trip, and the bare control-channel request
  (``vspfs.control.request``) that the CLI sends; the create reply carries no
  daemon-side timing, so a ``ping`` request is given as the channel's floor.

Cold reads: ``sync; echo 3 > /proc/sys/vm/drop_caches`` before each one when
that works (root); otherwise (or with ``--cold fadvise``) the file's clean pages
are dropped with ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every layer that
holds them: the backing file, the cache file and the file seen through the
mount (a FUSE mount has its own page cache). ``--quick`` uses fadvise so that a
smoke test does not empty a shared machine's caches.

Every measurement runs ``--rounds`` times (default 3), vspfs and its baseline
alternating in order; speeds and ratios are medians (the ratio is the median of
per-round ratios). No number is asserted anywhere.

Usage::

    python tools/bench.py                    # 1 GiB files, 10k small files, 100k for creation
    python tools/bench.py --size 256M --files 2000 --dir /some/fs
    python tools/bench.py --quick            # tiny sizes: checks that it runs
    python tools/bench.py --only create      # some sections only (the others print "not run")

Needs fusermount3, bindfs, ls and tar; prints a markdown table:
metric | vspfs | baseline | ratio | target | met?
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# measure the checkout this script belongs to (the daemon gets it through PYTHONPATH),
# not whatever copy of vspfs happens to be installed
sys.path.insert(0, str(REPO))

from vspfs.control import request  # noqa: E402
from vspfs.daemon import mount_table  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BLOCK = MiB  # application block size of every read and write (dd bs=1M)

START_TIMEOUT = 60.0  # daemon ready, bindfs mounted
STOP_TIMEOUT = 60.0  # daemon or bindfs gone after SIGTERM / unmount
CMD_TIMEOUT = 600.0  # one CLI call, ls -lR, tar
WRITER_TIMEOUT = 30.0  # the background writer starts / stops

#: metric names, in table order (the smoke test checks that every one is printed)
ROWS = (
    "drive: cold sequential read, unchanged file",
    "drive: warm re-read, unchanged file",
    "drive: cold read, fully changed file (cache file)",
    "drive: ls -lR (lstat of every file)",
    "drive: tar of the small files",
    "live: sequential write, no snapshot (1 MiB blocks + fsync)",
    "live: sequential read, cold",
    "live: sequential read, backing cached",
    "live: first overwrite with a snapshot (COW)",
    "live: later overwrite with a snapshot",
    "drive: read while a writer overwrites the file live",
    "snapshot create: CLI round trip",
    "snapshot create: control request",
)

SECTIONS = ("reads", "tree", "write", "liveread", "overwrite", "contention", "create")

#: the background writer of the contention row: overwrites one file through
#: the live view in a loop, 1 MiB at a time, until SIGTERM; prints "started"
#: after its first write and "<bytes> <seconds>" at the end
WRITER = r"""
import os, signal, sys, time
path, size = sys.argv[1], int(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
data = os.urandom(1 << 20)
fd = os.open(path, os.O_WRONLY)
total, t0, told = 0, time.perf_counter(), False
while not stop:
    for off in range(0, size, len(data)):
        total += os.pwrite(fd, data[: min(len(data), size - off)], off)
        if not told:
            print("started", flush=True)
            told = True
        if stop:
            break
os.close(fd)
print(total, time.perf_counter() - t0, flush=True)
"""


@dataclass
class Config:
    size: int
    files: int
    create_files: int
    rounds: int
    cold: str  # "drop" or "fadvise"
    only: tuple[str, ...]
    daemon_env: tuple[str, ...] = ()  # extra KEY=VALUE for the daemon only (what-if runs)


@dataclass
class Row:
    metric: str
    vspfs: str
    baseline: str
    ratio: str
    target: str
    met: str


def parse_size(text: str) -> int:
    units = {"": 1, "K": KiB, "M": MiB, "G": GiB}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units and not t[-1:].isdigit() else ""
    return int(float(t[: len(t) - len(unit)]) * units[unit])


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def mibs(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


def speed(v: float) -> str:
    return f"{v:,.0f} MiB/s"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- machine -------------------------------------------------------------------------


def fs_type(path: str) -> str:
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for mnt, (fstype, _source) in mount_table().items():
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, fstype
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


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def revision() -> str:
    """The checkout's commit (and "+ changes" when its tree differs), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


# -- file I/O --------------------------------------------------------------------------


def block_of(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def write_file(path: str, size: int, data: bytes, *, create: bool, fsync: bool = True) -> float:
    """dd-like: 1 MiB writes from offset 0, fsync at the end; returns seconds (open to close)."""
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
    t0 = time.perf_counter()
    fd = os.open(path, flags, 0o644)
    try:
        for off in range(0, size, BLOCK):
            n = min(BLOCK, size - off)
            view = memoryview(data)[:n]
            while view:
                view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def read_file(path: str, expect: int) -> float:
    """Read a whole file in 1 MiB reads into one buffer; returns seconds (open to close)."""
    buf = bytearray(BLOCK)
    views = [memoryview(buf)]
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            n = os.readv(fd, views)
            if n == 0:
                break
            total += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    if total != expect:
        raise RuntimeError(f"read {total} bytes from {path}, expected {expect}")
    return elapsed


def head(path: str, n: int = 4096) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read(n)


def fadvise_dontneed(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_caches_works() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
            f.write("3")
        return True
    except OSError:
        return False


def run_cmd(args: list[str], *, env: dict[str, str] | None = None) -> float:
    """Run a command to completion (output discarded); seconds of wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=CMD_TIMEOUT, check=False
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


# -- the world: directories, daemon, bindfs -----------------------------------------------


class World:
    """One benchmark's directories and processes; ``close`` removes every trace."""

    def __init__(self, cfg: Config, where: str | None) -> None:
        self.cfg = cfg
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="vspfs-bench-mounts-", dir=where))
        # Unix socket paths are limited to 107 bytes: keep the socket in a short directory
        self.sockdir = tempfile.mkdtemp(prefix="vspb-")
        self.backing = self._mkdir("backing")
        self.live = self._mkdir("live")
        self.cache = self._mkdir("cache")
        self.drive = self._mkdir("drive")
        self.bind = self._mkdir("bindfs")
        self.state = os.path.join(self.base, "state")
        self.socket = os.path.join(self.sockdir, "d.sock")
        self.log_path = os.path.join(self.base, "daemon.log")
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "VSPFS_SOCKET": self.socket,
            "VSPFS_STATE_DIR": self.state,
        }
        self.env.pop("VSPFS_DEBUG", None)
        self.daemon_env = dict(self.env)
        for item in cfg.daemon_env:
            key, _, value = item.partition("=")
            self.daemon_env[key] = value
        self.daemon: subprocess.Popen[bytes] | None = None
        self.bindfs: subprocess.Popen[bytes] | None = None
        self.writer: subprocess.Popen[str] | None = None
        self._log_fh: Any = None
        self.drive_snapshot: str | None = None

    def _mkdir(self, name: str) -> str:
        path = os.path.join(self.base, name)
        os.makedirs(path, exist_ok=True)
        return path

    # -- daemon

    def start_daemon(self) -> None:
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop_daemon
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vspfs.cli",
                "serve",
                f"{self.backing}={self.live}",
                "--cache-volume",
                self.cache,
            ],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=self.daemon_env,
            cwd=self.base,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"vspfs serve exited with {self.daemon.returncode}:\n{self.log_tail()}")
            try:
                request("ping", socket_path=self.socket, timeout=5.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"vspfs serve not ready within {START_TIMEOUT:g} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
        log(f"daemon ready, pid {self.daemon.pid} (py-spy dump --pid {self.daemon.pid})")

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log("daemon did not stop after SIGTERM: killing it")
                self.daemon.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.daemon.wait(timeout=30)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def log_tail(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def cli(self, *args: str) -> tuple[Any, float]:
        """One `vspfs ... --json` command; (parsed output, seconds of wall time)."""
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "vspfs.cli", *args, "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=CMD_TIMEOUT,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"vspfs {' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}")
        return json.loads(proc.stdout), elapsed

    def req(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return request(op, args or {}, socket_path=self.socket, timeout=CMD_TIMEOUT)

    def snapshot(self, mount: str | None = None) -> dict[str, Any]:
        args = ["snapshot", "create", self.backing] + (["--mount", mount] if mount else [])
        out, _ = self.cli(*args)
        return out["snapshots"][0]

    def destroy(self, snap_id: str) -> None:
        self.req("destroy", {"snapshots": [snap_id]})

    def remount_drive(self, snap_id: str) -> None:
        """A fresh virtual drive: no entry, attribute or page cache left from earlier passes."""
        if os.path.realpath(self.drive) in mount_table():
            self.req("unmount", {"dir": self.drive})
        self.req("mount", {"snapshot": snap_id, "dir": self.drive})

    # -- bindfs

    def mount_bindfs(self) -> None:
        self.unmount_bindfs()
        self.bindfs = subprocess.Popen(
            ["bindfs", "-f", self.backing, self.bind],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.base,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while mount_table().get(self.bind, ("", ""))[0] != "fuse":
            if self.bindfs.poll() is not None:
                err = self.bindfs.stderr.read().decode(errors="replace") if self.bindfs.stderr else ""
                raise RuntimeError(f"bindfs exited with {self.bindfs.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bindfs did not mount {self.bind} within {START_TIMEOUT:g} s")
            time.sleep(0.02)

    def unmount_bindfs(self) -> None:
        if self.bind in mount_table():
            fusermount(self.bind)
        if self.bindfs is not None:
            try:
                self.bindfs.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.bindfs.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.bindfs.wait(timeout=30)
            if self.bindfs.stderr is not None:
                self.bindfs.stderr.close()
            self.bindfs = None

    # -- the background writer

    def start_writer(self, path: str, size: int) -> None:
        self.writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, path, str(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.writer.stdout is not None
        ready, _, _ = select.select([self.writer.stdout], [], [], WRITER_TIMEOUT)
        line = self.writer.stdout.readline().strip() if ready else ""
        if line != "started":
            self.stop_writer()
            raise RuntimeError(f"the background writer did not start within {WRITER_TIMEOUT:g} s")

    def stop_writer(self) -> float | None:
        """Stop the writer; its speed in MiB/s (None if it said nothing)."""
        w, self.writer = self.writer, None
        if w is None:
            return None
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
        try:
            out, err = w.communicate(timeout=WRITER_TIMEOUT)
        except subprocess.TimeoutExpired:
            w.kill()
            out, err = w.communicate(timeout=30)
        try:
            nbytes, seconds = out.split()
            return mibs(int(nbytes), float(seconds))
        except ValueError:
            log(f"background writer: {err.strip()[-300:]}")
            return None

    # -- teardown

    def close(self) -> None:
        """Stop everything started here and unmount whatever is left; remove the files."""
        with contextlib.suppress(Exception):
            self.stop_writer()
        with contextlib.suppress(Exception):
            self.unmount_bindfs()
        self.stop_daemon()
        for mp in sorted(self.mounts_left(), key=len, reverse=True):
            fusermount(mp)
        if self.mounts_left():
            log(f"mounts left under {self.base}: {self.mounts_left()}; not removing it")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def mounts_left(self) -> list[str]:
        return [mp for mp in mount_table() if mp == self.base or mp.startswith(self.base + "/")]


def fusermount(path: str) -> None:
    """fusermount3 -u, then -u -z if it is still mounted; every call bounded."""
    for args in (["-u"], ["-u", "-z"]):
        if path not in mount_table():
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(["fusermount3", *args, path], capture_output=True, timeout=30, check=False)


# -- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, world: World) -> None:
        self.cfg = cfg
        self.w = world
        self.rows: list[Row] = []
        self.orig = block_of(1)  # content of every big file at snapshot time
        self.new = block_of(2)  # what the live view writes over it
        self.unchanged = "big/unchanged.bin"
        self.changed = "big/changed.bin"
        self.target = "big/overwrite.bin"
        self.cold_method = cfg.cold

    def add(self, *cells: str) -> None:
        self.rows.append(Row(*cells))

    def p(self, root: str, rel: str) -> str:
        return os.path.join(root, rel)

    # -- setup

    def make_data(self) -> None:
        cfg, b = self.cfg, self.w.backing
        os.makedirs(os.path.join(b, "big"))
        for rel in (self.unchanged, self.changed, self.target):
            write_file(self.p(b, rel), cfg.size, self.orig, create=True, fsync=False)
        rnd = random.Random(3)
        payload = rnd.randbytes(16 * KiB)
        # the small-file tree for ls -lR and tar: 1,000 files per directory, 1-16 KiB each
        for i in range(cfg.files):
            d = os.path.join(b, "small", f"d{i // 1000:03d}")
            if i % 1000 == 0:
                os.makedirs(d)
            with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
                f.write(payload[: rnd.randrange(1, 16) * KiB])
        # empty files up to create_files files on the volume, for the snapshot creation rows
        for i in range(max(0, cfg.create_files - cfg.files - 3)):
            d = os.path.join(b, "many", f"d{i // 1000:03d}")
            if i % 1000 == 0:
                os.makedirs(d)
            os.close(os.open(os.path.join(d, f"e{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        os.sync()

    def count_files(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.w.backing))

    # -- cold caches

    def cold(self, *paths: str) -> None:
        """Drop every cached page of ``paths`` (each layer: backing, cache file, mount)."""
        if self.cold_method == "drop":
            if drop_caches_works():
                return
            log("drop_caches failed: falling back to posix_fadvise(DONTNEED)")
            self.cold_method = "fadvise"
        os.sync()
        for path in paths:
            fadvise_dontneed(path)

    # -- sections

    def bench_reads(self) -> None:
        """Drive rows 0-2: cold unchanged vs bindfs, warm vs direct, changed vs unchanged."""
        cfg, w = self.cfg, self.w
        snap = w.snapshot(mount=w.drive)
        w.drive_snapshot = snap["id"]
        cache_file = snap["cache_file"]
        write_file(self.p(w.live, self.changed), cfg.size, self.new, create=False)
        if head(self.p(w.drive, self.changed)) != self.orig[:4096]:
            raise RuntimeError(
                "the virtual drive does not show the snapshot-time content of the changed file"
            )
        if head(self.p(w.live, self.changed)) != self.new[:4096]:
            raise RuntimeError("the live view does not show the new content of the changed file")
        w.mount_bindfs()
        u_back, u_bind, u_drive = (self.p(r, self.unchanged) for r in (w.backing, w.bind, w.drive))
        c_back, c_drive = self.p(w.backing, self.changed), self.p(w.drive, self.changed)
        size = cfg.size
        cold_r, warm_r, chg_r = [], [], []
        s_bind, s_drive, s_warm, s_direct, s_chg = [], [], [], [], []
        for rnd in range(cfg.rounds):
            order = ("bindfs", "drive") if rnd % 2 == 0 else ("drive", "bindfs")
            got: dict[str, float] = {}
            for who in order:
                self.cold(u_back, u_bind, u_drive)
                got[who] = mibs(size, read_file(u_bind if who == "bindfs" else u_drive, size))
            # warm: the drive keeps its page cache (kernel_cache); the backing file is read once first
            read_file(u_drive, size)
            read_file(u_back, size)
            warm = mibs(size, read_file(u_drive, size))
            direct = mibs(size, read_file(u_back, size))
            # changed file, cold: every chunk comes from the cache file
            self.cold(c_back, cache_file, c_drive)
            chg = mibs(size, read_file(c_drive, size))
            s_bind.append(got["bindfs"])
            s_drive.append(got["drive"])
            s_warm.append(warm)
            s_direct.append(direct)
            s_chg.append(chg)
            cold_r.append(got["drive"] / got["bindfs"])
            warm_r.append(warm / direct)
            chg_r.append(chg / got["drive"])
            log(
                f"reads round {rnd + 1}: drive cold {got['drive']:.0f}, bindfs cold {got['bindfs']:.0f}, "
                f"drive warm {warm:.0f}, direct warm {direct:.0f}, changed cold {chg:.0f} MiB/s"
            )
        w.unmount_bindfs()
        mb = f"{size // MiB:,} MiB"
        r = median(cold_r)
        self.add(
            ROWS[0],
            f"{speed(median(s_drive))} ({mb})",
            f"bindfs {speed(median(s_bind))}",
            f"{r:.2f}x",
            ">= 1.2x",
            verdict(r >= 1.2),
        )
        r = median(warm_r)
        self.add(
            ROWS[1],
            speed(median(s_warm)),
            f"direct page cache {speed(median(s_direct))}",
            f"{r:.2f}x",
            ">= 0.5x",
            verdict(r >= 0.5),
        )
        r = median(chg_r)
        self.add(
            ROWS[2],
            speed(median(s_chg)),
            f"unchanged, cold {speed(median(s_drive))}",
            f"{r:.2f}x",
            ">= 0.8x",
            verdict(r >= 0.8),
        )

    def bench_tree(self) -> None:
        """Drive rows 3-4: ls -lR and tar of the small files, fresh mounts over a cached backing tree."""
        cfg, w = self.cfg, self.w
        snap_id = w.drive_snapshot
        own = snap_id is None
        if own:
            snap_id = w.snapshot(mount=w.drive)["id"]
        assert snap_id is not None
        rel = "small"
        ls = ["ls", "-lR"]
        tar = ["sh", "-c", 'tar -C "$1" -cf - . | cat > /dev/null', "sh"]
        # the backing tree in the page cache (dentries, inodes, data): both sides read the same
        run_cmd([*ls, self.p(w.backing, rel)])
        run_cmd([*tar, self.p(w.backing, rel)])
        results: dict[str, tuple[list[float], list[float], list[float]]] = {
            "ls": ([], [], []),
            "tar": ([], [], []),
        }
        for rnd in range(cfg.rounds):
            for name, cmd in (("ls", ls), ("tar", tar)):
                order = ("bindfs", "drive") if rnd % 2 == 0 else ("drive", "bindfs")
                got: dict[str, float] = {}
                for who in order:
                    if who == "bindfs":
                        w.mount_bindfs()
                        got[who] = run_cmd([*cmd, self.p(w.bind, rel)])
                        w.unmount_bindfs()
                    else:
                        w.remount_drive(snap_id)
                        got[who] = run_cmd([*cmd, self.p(w.drive, rel)])
                v, base, ratios = results[name]
                v.append(got["drive"])
                base.append(got["bindfs"])
                ratios.append(got["bindfs"] / got["drive"])
                log(f"tree round {rnd + 1}: {name} drive {got['drive']:.3f} s, bindfs {got['bindfs']:.3f} s")
        if own:
            w.destroy(snap_id)
        for row, name, what in ((ROWS[3], "ls", "ls -lR"), (ROWS[4], "tar", "tar")):
            v, base, ratios = results[name]
            r = median(ratios)
            self.add(
                row,
                f"{median(v):.3f} s ({cfg.files:,} files, {what})",
                f"bindfs {median(base):.3f} s",
                f"{r:.2f}x",
                ">= 1.0x",
                verdict(r >= 1.0),
            )

    def bench_write(self) -> None:
        """Row 5: new file, 1 MiB blocks, fsync; live view vs the backing directory."""
        cfg, w = self.cfg, self.w
        os.makedirs(self.p(w.backing, "w"), exist_ok=True)
        direct_path = self.p(w.backing, "w/direct.bin")
        live_path = self.p(w.live, "w/live.bin")
        v, base, ratios = [], [], []
        for rnd in range(cfg.rounds):
            order = ("direct", "live") if rnd % 2 == 0 else ("live", "direct")
            got: dict[str, float] = {}
            for who in order:
                path = direct_path if who == "direct" else live_path
                os.sync()
                got[who] = mibs(cfg.size, write_file(path, cfg.size, self.new, create=True))
                os.unlink(path)
                os.sync()
            v.append(got["live"])
            base.append(got["direct"])
            ratios.append(got["live"] / got["direct"])
            log(f"write round {rnd + 1}: live {got['live']:.0f}, direct {got['direct']:.0f} MiB/s")
        os.rmdir(self.p(w.backing, "w"))
        r = median(ratios)
        self.add(
            ROWS[5],
            speed(median(v)),
            f"direct {speed(median(base))}",
            f"{r:.2f}x",
            ">= 0.4x",
            verdict(r >= 0.4),
        )

    def bench_liveread(self) -> None:
        """Rows 6-7: live view reads vs bindfs, cold and with the backing file cached."""
        cfg, w = self.cfg, self.w
        w.mount_bindfs()
        back, bind, live = (self.p(r, self.unchanged) for r in (w.backing, w.bind, w.live))
        res: dict[str, tuple[list[float], list[float], list[float]]] = {
            "cold": ([], [], []),
            "cached": ([], [], []),
        }
        for rnd in range(cfg.rounds):
            for mode in ("cold", "cached"):
                order = ("bindfs", "live") if rnd % 2 == 0 else ("live", "bindfs")
                got: dict[str, float] = {}
                for who in order:
                    path = bind if who == "bindfs" else live
                    if mode == "cold":
                        self.cold(back, bind, live)
                    else:
                        read_file(back, cfg.size)
                        fadvise_dontneed(path)  # only the mount's own pages: the backing stays cached
                    got[who] = mibs(cfg.size, read_file(path, cfg.size))
                v, base, ratios = res[mode]
                v.append(got["live"])
                base.append(got["bindfs"])
                ratios.append(got["live"] / got["bindfs"])
                log(f"live read {rnd + 1} {mode}: live {got['live']:.0f}, bindfs {got['bindfs']:.0f} MiB/s")
        w.unmount_bindfs()
        for row, mode in ((ROWS[6], "cold"), (ROWS[7], "cached")):
            v, base, ratios = res[mode]
            r = median(ratios)
            self.add(
                row,
                speed(median(v)),
                f"bindfs {speed(median(base))}",
                f"{r:.2f}x",
                ">= 1.2x",
                verdict(r >= 1.2),
            )

    def bench_overwrite(self) -> None:
        """Rows 8-9: overwrite a snapshot-time file through the live view, first and later, vs no snapshot.

        In the page cache (no fsync; ``sync`` untimed before each pass): what
        copy-on-write adds is CPU and page-cache work, which a disk flush of
        the same size would only hide in its noise.
        """
        cfg, w = self.cfg, self.w
        path = self.p(w.live, self.target)
        none_s, first_s, later_s, first_r, later_r = [], [], [], [], []

        def overwrite(data: bytes) -> float:
            os.sync()
            return mibs(cfg.size, write_file(path, cfg.size, data, create=False, fsync=False))

        overwrite(self.orig)  # untimed: the first pass over a file pays for its page-cache pages
        for rnd in range(cfg.rounds):
            # the no-snapshot baseline before and after the snapshot's passes, averaged,
            # so that neither side gains from its place in the sequence
            before = overwrite(self.new)
            snap = w.snapshot()
            try:
                t_first = overwrite(self.orig)
                t_later = overwrite(self.new)
            finally:
                w.destroy(snap["id"])
            after = overwrite(self.orig)
            t_none = (before + after) / 2
            none_s.append(t_none)
            first_s.append(t_first)
            later_s.append(t_later)
            first_r.append(t_first / t_none)
            later_r.append(t_later / t_none)
            log(
                f"overwrite {rnd + 1}: none {before:.0f}/{after:.0f}, first {t_first:.0f}, "
                f"later {t_later:.0f} MiB/s"
            )
        r = median(first_r)
        self.add(
            ROWS[8],
            speed(median(first_s)),
            f"no snapshot {speed(median(none_s))}",
            f"{r:.2f}x",
            ">= 0.3x",
            verdict(r >= 0.3),
        )
        r = median(later_r)
        self.add(
            ROWS[9],
            speed(median(later_s)),
            f"no snapshot {speed(median(none_s))}",
            f"{r:.2f}x",
            ">= 0.9x",
            verdict(r >= 0.9),
        )

    def bench_contention(self) -> None:
        """Row 10: a drive read with and without a writer overwriting the same file live.

        Fresh snapshot each round (so the writer starts with copy-on-write);
        the backing file stays cached, the drive's own pages are dropped
        before each read, so every read goes through the daemon.
        """
        cfg, w = self.cfg, self.w
        back, live, drive = (self.p(r, self.target) for r in (w.backing, w.live, w.drive))
        idle_s, busy_s, ratios, writer_s = [], [], [], []
        had = w.drive_snapshot
        if had is not None:
            w.destroy(had)
            w.drive_snapshot = None
        for rnd in range(cfg.rounds):
            snap = w.snapshot(mount=w.drive)
            try:
                before = head(back)
                read_file(back, cfg.size)
                fadvise_dontneed(drive)
                idle = mibs(cfg.size, read_file(drive, cfg.size))
                fadvise_dontneed(drive)
                w.start_writer(live, cfg.size)
                try:
                    busy = mibs(cfg.size, read_file(drive, cfg.size))
                finally:
                    wspeed = w.stop_writer()
                if head(drive) != before:
                    raise RuntimeError("the virtual drive shows data written after its snapshot")
            finally:
                w.destroy(snap["id"])
                os.sync()
            idle_s.append(idle)
            busy_s.append(busy)
            ratios.append(busy / idle)
            if wspeed is not None:
                writer_s.append(wspeed)
            log(f"contention {rnd + 1}: idle {idle:.0f}, busy {busy:.0f}, writer {wspeed or 0:.0f} MiB/s")
        r = median(ratios)
        writer = f"; writer meanwhile {speed(median(writer_s))}" if writer_s else ""
        self.add(
            ROWS[10],
            f"{speed(median(busy_s))}{writer}",
            f"idle {speed(median(idle_s))}",
            f"{r:.2f}x",
            ">= 0.5x",
            verdict(r >= 0.5),
        )

    def bench_create(self) -> None:
        """Rows 11-12: snapshot creation with create_files files on the volume."""
        cfg, w = self.cfg, self.w
        n = self.count_files()
        cli_t, cli_floor, req_t, ping_t = [], [], [], []
        reps = max(5, cfg.rounds * 2)
        for _ in range(reps):
            out, t = w.cli("snapshot", "create", w.backing)
            cli_t.append(t)
            w.destroy(out["snapshots"][0]["id"])
            _, t = w.cli("list")
            cli_floor.append(t)
            t0 = time.perf_counter()
            res = w.req("snapshot.create", {"volumes": [w.backing], "mount": None})
            req_t.append(time.perf_counter() - t0)
            w.destroy(res["snapshots"][0]["id"])
            t0 = time.perf_counter()
            w.req("ping")
            ping_t.append(time.perf_counter() - t0)
        ms = 1000.0
        c, f, q, pg = (median(x) * ms for x in (cli_t, cli_floor, req_t, ping_t))
        self.add(
            ROWS[11],
            f"{c:.1f} ms ({n:,} files; median of {reps})",
            f"`vspfs list --json` {f:.1f} ms",
            "n/a",
            "< 50 ms",
            verdict(c < 50),
        )
        self.add(
            ROWS[12],
            f"{q:.1f} ms ({n:,} files; median of {reps})",
            f"`ping` request {pg:.1f} ms",
            "n/a",
            "< 50 ms",
            verdict(q < 50),
        )

    # -- output

    def not_run(self) -> None:
        have = {r.metric for r in self.rows}
        for name in ROWS:
            if name not in have:
                self.add(name, "not run", "not run", "n/a", "n/a", "n/a")

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
        cfg = Config(size=16 * MiB, files=300, create_files=1000, rounds=1, cold="fadvise", only=SECTIONS)
    else:
        cfg = Config(size=GiB, files=10_000, create_files=100_000, rounds=3, cold="drop", only=SECTIONS)
    if args.size is not None:
        cfg.size = parse_size(args.size)
    if args.files is not None:
        cfg.files = args.files
    if args.create_files is not None:
        cfg.create_files = args.create_files
    if args.rounds is not None:
        cfg.rounds = args.rounds
    if args.cold is not None:
        cfg.cold = args.cold
    cfg.daemon_env = tuple(args.daemon_env or ())
    if any("=" not in item for item in cfg.daemon_env):
        raise SystemExit("bench: --daemon-env takes KEY=VALUE")
    if args.only:
        wanted = tuple(s.strip() for s in args.only.split(",") if s.strip())
        bad = [s for s in wanted if s not in SECTIONS]
        if bad:
            raise SystemExit(f"bench: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
        cfg.only = wanted
    if cfg.size < BLOCK or cfg.size % BLOCK or cfg.files < 1 or cfg.rounds < 1:
        raise SystemExit("bench: --size must be a multiple of 1 MiB, --files and --rounds >= 1")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", help="size of the big files (default 1G; a multiple of 1M)")
    parser.add_argument("--files", type=int, help="small files for ls -lR and tar (default 10000)")
    parser.add_argument(
        "--create-files", type=int, help="files on the volume for snapshot creation (default 100000)"
    )
    parser.add_argument("--rounds", type=int, help="measurements per row, the median is kept (default 3)")
    parser.add_argument(
        "--cold", choices=("drop", "fadvise"), help="how to make reads cold (default drop, as root)"
    )
    parser.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    parser.add_argument(
        "--daemon-env",
        action="append",
        metavar="KEY=VALUE",
        help="extra environment for the daemon only, e.g. GLIBC_TUNABLES=... (what-if runs; repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the benchmark runs")
    parser.add_argument("--dir", help="where to create the volume and mount points (default: the temp dir)")
    args = parser.parse_args(argv)
    cfg = config_from(args)
    for tool in ("fusermount3", "bindfs", "ls", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing (apt-get install fuse3 bindfs tar coreutils)")

    load_start = load_average()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    world = World(cfg, args.dir)
    bench = Bench(cfg, world)
    try:
        log(f"creating the data in {world.base}")
        bench.make_data()
        world.start_daemon()
        runners: dict[str, Callable[[], None]] = {
            "reads": bench.bench_reads,
            "tree": bench.bench_tree,
            "write": bench.bench_write,
            "liveread": bench.bench_liveread,
            "overwrite": bench.bench_overwrite,
            "contention": bench.bench_contention,
            "create": bench.bench_create,
        }
        for name in SECTIONS:
            if name in cfg.only:
                log(f"section {name}")
                runners[name]()
    finally:
        world.close()
    bench.not_run()

    print("# vspfs mount benchmark")
    print()
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"- command: `{f'python tools/bench.py {shown}'.strip()}`; commit {revision()}")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    where = args.dir or tempfile.gettempdir()
    print(f"- nproc: {cpus}; memory: {mem_total()}; data filesystem: {fs_type(where)}")
    print(
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()} "
        f"({platform.machine()}); {tool_version(['bindfs', '--version'])}; "
        f"{tool_version(['fusermount3', '--version'])}"
    )
    print(f"- date: {started}; 1-min load average {load_start} at start, {load_average()} at end")
    print(
        f"- big files {cfg.size // MiB:,} MiB, {cfg.files:,} small files, {cfg.create_files:,} files for "
        f"creation; median of {cfg.rounds} round(s); cold reads by "
        f"{'drop_caches' if bench.cold_method == 'drop' else 'posix_fadvise(DONTNEED)'}"
    )
    if cfg.daemon_env:
        print(f"- daemon environment: {', '.join(cfg.daemon_env)}")
    print()
    print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
