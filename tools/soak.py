#!/usr/bin/env python3
"""Soak test: a real `vspfs serve` daemon, two volumes, many writers, snapshot sets in a loop.

    python tools/soak.py [--duration SECONDS] [--writers N] [--rss-tolerance MIB] [--fd-tolerance N]

What it does:

* starts ``python -m vspfs.cli serve vol1=live1 vol2=live2`` as a subprocess on
  a private socket, state directory and cache volume under a temporary
  directory;
* runs N writer threads (spread over both volumes), each in its own directory
  of a live view: overwrite, append, truncate, create, rename, delete. Each
  writer keeps the content it was acknowledged (the call returned) in memory;
* in a loop until ``--duration`` is spent: takes every volume's lock
  exclusively (writers hold it shared around each operation), computes the
  expected manifest (path -> sha256) from the backing directories and checks
  it against the writers' acknowledged state, creates one snapshot SET of
  both volumes with ``vspfs snapshot create vol1 vol2 --mount DIR --json``,
  releases the writers, then reads every file of both drives while the
  writers keep changing the live views and compares with the manifest, and
  destroys the set. After every cycle it samples the daemon's VmRSS and number
  of open descriptors;
* at the end stops the writers, checks every acknowledged write is in the
  backing directories, stops the daemon with SIGTERM (it must exit 0 and leave
  no mount, cache file or retained area) and prints a table.

Exit status: 0 when everything matched and neither RSS nor open descriptors
grew beyond the tolerance (last sample against the sample after the first
cycle, which absorbs warm-up); 1 otherwise; 2 when the daemon could not be
set up. The daemon's mounts are always lazily unmounted on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout this script is in, like the daemon it starts

from vspfs import procs  # noqa: E402  (the process tree: the daemon's children)

CLI_TIMEOUT = 120.0
VOLUMES = ("vol1", "vol2")


class RWLock:
    """Many shared holders (writers) or one exclusive holder (the snapshot step)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


class Writer(threading.Thread):
    """Changes the files of its own directory; ``files`` is what was acknowledged."""

    def __init__(self, index: int, volume: str, live: str, lock: RWLock, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.volume = volume
        self.dirname = f"w{index}"
        self.root = os.path.join(live, self.dirname)
        self.lock = lock
        self.stop_event = stop
        self.rng = random.Random(index * 7919 + 17)
        self.files: dict[str, bytes] = {}
        self.counter = 0
        self.ops = 0
        self.errors: list[str] = []

    def _new_name(self) -> str:
        self.counter += 1
        return f"f{self.counter}"

    def _payload(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def step(self) -> None:
        rng = self.rng
        names = sorted(self.files)
        op = rng.choice(
            ("create", "create", "overwrite", "overwrite", "append", "truncate", "rename", "delete")
        )
        if not names or (op == "delete" and len(names) < 3):
            op = "create"
        if len(names) > 40 and op == "create":
            op = "delete"
        name = rng.choice(names) if names else ""
        path = os.path.join(self.root, name)
        if op == "create":
            name = self._new_name()
            data = self._payload(rng.choice((0, 100, 4096, 70_000, 300_000)))
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(data)
            self.files[name] = data
        elif op == "overwrite":
            old = self.files[name]
            off = rng.randrange(0, len(old) + 1)
            data = self._payload(rng.choice((1, 512, 4096, 65_536, 200_000)))
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(data)
            new = bytearray(old)
            new[off : off + len(data)] = data
            self.files[name] = bytes(new)
        elif op == "append":
            data = self._payload(rng.choice((1, 1000, 65_536)))
            with open(path, "ab") as f:
                f.write(data)
            self.files[name] += data
        elif op == "truncate":
            old = self.files[name]
            size = rng.choice((0, len(old) // 2, len(old) + 5000))
            os.truncate(path, size)
            self.files[name] = old[:size] + b"\0" * max(0, size - len(old))
        elif op == "rename":
            new_name = self._new_name() if rng.random() < 0.7 else rng.choice(names)
            os.rename(path, os.path.join(self.root, new_name))
            data = self.files.pop(name)
            self.files[new_name] = data
        elif op == "delete":
            os.unlink(path)
            del self.files[name]
        self.ops += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with self.lock.shared():
                    self.step()
            except OSError as exc:
                # an unacknowledged write: the model was not updated, but a
                # partial change may be on disk; the final check reports it
                self.errors.append(f"{self.volume}/{self.dirname}: {exc!r}")
                if len(self.errors) > 20:
                    return
            time.sleep(0.001)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_manifest(root: str, dirs: list[str]) -> dict[str, str]:
    """{relative path: sha256 (files) or "dir"} of the writers' directories under ``root``."""
    out: dict[str, str] = {}
    for d in dirs:
        for here, subdirs, files in os.walk(os.path.join(root, d)):
            rel = os.path.relpath(here, root)
            out[rel] = "dir"
            for name in files:
                out[os.path.join(rel, name)] = sha256_file(os.path.join(here, name))
            for name in subdirs:
                out[os.path.join(rel, name)] = "dir"
    return out


def model_manifest(writers: list[Writer]) -> dict[str, str]:
    out: dict[str, str] = {}
    for w in writers:
        out[w.dirname] = "dir"
        for name, data in w.files.items():
            out[os.path.join(w.dirname, name)] = hashlib.sha256(data).hexdigest()
    return out


def diff(expected: dict[str, str], got: dict[str, str], limit: int = 10) -> list[str]:
    out = []
    for path in sorted(set(expected) | set(got)):
        if expected.get(path) != got.get(path):
            out.append(
                f"{path}: expected {expected.get(path, 'absent')[:12]}, got {got.get(path, 'absent')[:12]}"
            )
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def proc_sample(pid: int) -> tuple[int, int, int]:
    """(VmRSS in KiB, open descriptors, child processes) of ``pid``."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), len(procs.children(pid))


def fd_kinds(pid: int) -> dict[str, int]:
    """How many of ``pid``'s descriptors are sockets, pipes, files... (for the growth report)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "path"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def mounts_under(root: str) -> list[str]:
    root = os.path.realpath(root)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == root or mp.startswith(root + "/"):
                out.append(mp)
    return out


class Daemon:
    def __init__(self, base: str) -> None:
        self.base = base
        self.backing = {v: self._mkdir(v) for v in VOLUMES}
        self.live = {v: self._mkdir(f"live-{v}") for v in VOLUMES}
        self.cache = self._mkdir("cache")
        self.snaps = self._mkdir("snaps")
        self.log = os.path.join(base, "daemon.log")
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "VSPFS_SOCKET": os.path.join(base, "d.sock"),
            "VSPFS_STATE_DIR": os.path.join(base, "state"),
        }
        self.env.pop("VSPFS_DEBUG", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh = None

    def _mkdir(self, name: str) -> str:
        path = os.path.join(self.base, name)
        os.makedirs(path, exist_ok=True)
        return os.path.realpath(path)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vspfs.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        specs = [f"{self.backing[v]}={self.live[v]}" for v in VOLUMES]
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vspfs.cli", "serve", *specs, "--cache-volume", self.cache],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vspfs serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.cli("list", "--json", timeout=30).returncode == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError("the daemon did not answer `vspfs list` within 60 s")

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=30)
        elif self.proc is not None:
            code = self.proc.returncode
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        for mp in sorted(mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30, check=False)
        return code

    def log_tail(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def run(args: argparse.Namespace) -> int:
    base = tempfile.mkdtemp(prefix="vsps")  # short: Unix socket paths are limited to 107 bytes
    d = Daemon(base)
    problems: list[str] = []
    samples: list[tuple[int, int]] = []
    cycles = mismatches = 0
    writers: list[Writer] = []
    kinds_first: dict[str, int] = {}
    kinds_last: dict[str, int] = {}
    stop = threading.Event()
    try:
        try:
            d.start()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"soak: cannot start the daemon: {exc}", file=sys.stderr)
            return 2
        assert d.proc is not None
        locks = {v: RWLock() for v in VOLUMES}
        for i in range(args.writers):
            v = VOLUMES[i % len(VOLUMES)]
            w = Writer(i, v, d.live[v], locks[v], stop)
            os.mkdir(w.root)
            writers.append(w)
        for w in writers:
            w.start()
        by_volume = {v: [w for w in writers if w.volume == v] for v in VOLUMES}
        samples.append(proc_sample(d.proc.pid))
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline and d.proc.poll() is None:
            cycles += 1
            for v in VOLUMES:
                locks[v].acquire_exclusive()
            try:
                expected = {
                    v: tree_manifest(d.backing[v], [w.dirname for w in by_volume[v]]) for v in VOLUMES
                }
                for v in VOLUMES:
                    lost = diff(model_manifest(by_volume[v]), expected[v])
                    if lost:
                        problems.append(
                            f"cycle {cycles}: backing of {v} differs from acknowledged writes: {lost}"
                        )
                target = os.path.join(d.snaps, f"c{cycles}")
                os.mkdir(target)
                done = d.cli("snapshot", "create", *VOLUMES, "--mount", target, "--json")
            finally:
                for v in VOLUMES:
                    locks[v].release_exclusive()
            if done.returncode != 0:
                problems.append(
                    f"cycle {cycles}: snapshot create -> {done.returncode}: {done.stderr.strip()}"
                )
                mismatches += 1
                break
            ids = [s["id"] for s in json.loads(done.stdout)["snapshots"]]
            for v in VOLUMES:
                try:
                    got = tree_manifest(os.path.join(target, v), [w.dirname for w in by_volume[v]])
                except OSError as exc:
                    got = {"//error": repr(exc)}
                bad = diff(expected[v], got)
                if bad:
                    mismatches += 1
                    problems.append(f"cycle {cycles}: drive of {v} differs from the snapshot instant: {bad}")
            gone = d.cli("destroy", *ids)
            if gone.returncode != 0:
                problems.append(f"cycle {cycles}: destroy -> {gone.returncode}: {gone.stderr.strip()}")
                break
            with contextlib.suppress(OSError):
                os.rmdir(target)
            samples.append(proc_sample(d.proc.pid))
            kinds_last = fd_kinds(d.proc.pid)
            if cycles == 1:
                kinds_first = kinds_last
            if args.verbose:
                rss, fds, kids = samples[-1]
                ops = sum(w.ops for w in writers)
                print(
                    f"cycle {cycles}: rss {rss} KiB, fds {fds}, children {kids}, writer ops {ops}", flush=True
                )
        if d.proc.poll() is not None:
            problems.append(f"the daemon exited with {d.proc.returncode} during the soak")
        stop.set()
        for w in writers:
            w.join(timeout=60)
            if w.is_alive():
                problems.append(f"{w.name} did not stop within 60 s")
            problems += [f"write error {e}" for e in w.errors[:5]]
        for v in VOLUMES:
            lost = diff(
                model_manifest(by_volume[v]), tree_manifest(d.backing[v], [w.dirname for w in by_volume[v]])
            )
            if lost:
                problems.append(f"end: acknowledged writes missing from the backing of {v}: {lost}")
        ops = sum(w.ops for w in writers)
        code = d.stop()
        if code != 0:
            problems.append(f"vspfs serve exited with {code} on SIGTERM")
        leftovers = [
            os.path.join(dd, n)
            for dd in [d.cache, *d.backing.values()]
            for n in os.listdir(dd)
            if (n.startswith("VSP_") and n.endswith(".vsp")) or n == ".vsp-retained"
        ]
        if leftovers:
            problems.append(f"left behind after SIGTERM: {leftovers}")
    finally:
        stop.set()
        d.stop()

    rss = [s[0] for s in samples]
    fds = [s[1] for s in samples]
    kids = [s[2] for s in samples]
    baseline = samples[1] if len(samples) > 1 else samples[0]
    if rss and rss[-1] - baseline[0] > args.rss_tolerance * 1024:
        problems.append(f"RSS grew from {baseline[0]} to {rss[-1]} KiB (tolerance {args.rss_tolerance} MiB)")
    if fds and fds[-1] - baseline[1] > args.fd_tolerance:
        grown = {k: n - kinds_first.get(k, 0) for k, n in kinds_last.items() if n != kinds_first.get(k, 0)}
        problems.append(
            f"open fds grew from {baseline[1]} to {fds[-1]} (tolerance {args.fd_tolerance}); "
            f"growth by kind after cycle 1: {grown}"
        )
    if kids and kids[-1] > baseline[2]:
        problems.append(f"child processes grew from {baseline[2]} to {kids[-1]}")

    print(f"{'duration (s)':<22}{args.duration:>12g}")
    print(f"{'writers':<22}{args.writers:>12}")
    print(f"{'writer operations':<22}{ops:>12}")
    print(f"{'cycles':<22}{cycles:>12}")
    print(f"{'mismatches':<22}{mismatches:>12}")
    if rss:
        print(f"{'RSS KiB first/last/max':<22}{rss[0]:>12}{rss[-1]:>12}{max(rss):>12}")
        print(f"{'fds first/last/max':<22}{fds[0]:>12}{fds[-1]:>12}{max(fds):>12}")
        print(f"{'children first/last/max':<22}{kids[0]:>12}{kids[-1]:>12}{max(kids):>12}")
    for p in problems:
        print(f"PROBLEM: {p}")
    if problems:
        print("--- daemon log (tail) ---\n" + d.log_tail(), file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if problems or mismatches or cycles == 0 else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of snapshot cycles (default 60)")
    p.add_argument(
        "--writers", type=int, default=8, help="writer threads, spread over both volumes (default 8)"
    )
    p.add_argument("--rss-tolerance", type=float, default=64.0, help="allowed RSS growth in MiB (default 64)")
    p.add_argument("--fd-tolerance", type=int, default=16, help="allowed growth of open fds (default 16)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per cycle")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
