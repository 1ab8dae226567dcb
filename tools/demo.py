#!/usr/bin/env python3
"""The vspfs demo: serve a sample volume, snapshot it, change the live data,
show the virtual drive still holding the old data, then back it up.

Everything happens in a temporary directory through the real command line
(`vspfs serve`, `vspfs snapshot create`, ...) and real FUSE mounts; nothing
outside the temporary directory is touched, and everything is removed at the
end, even on failure. Exit status 0 means every check passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

VSPFS = [sys.executable, "-m", "vspfs"]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(
    *args: str, env: dict[str, str], check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    shown = " ".join(["vspfs", *args])
    print(f"$ {shown}", flush=True)
    proc = subprocess.run([*VSPFS, *args], env=env, text=True, capture_output=True, timeout=120)
    if proc.stdout.strip() and not quiet:
        print(proc.stdout.rstrip())
    if proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `{shown}` failed with exit code {proc.returncode}")
    return proc


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def tree(root: str) -> dict[str, str]:
    """relative path -> content digest (or 'dir'/'link -> target')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link -> " + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                out[rel] = digest(path)
    return out


def is_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def main() -> int:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("demo: needs /dev/fuse and fusermount3 (apt-get install fuse3)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="vspfs-demo-")
    backing, live, drive, cache, state = (
        os.path.join(work, n) for n in ("disk", "live", "drive", "cache", "state")
    )
    for d in (backing, live, cache):
        os.mkdir(d)
    env = dict(os.environ, VSPFS_SOCKET=os.path.join(work, "vspfs.sock"), VSPFS_STATE_DIR=state)
    daemon: subprocess.Popen[str] | None = None
    try:
        say("1. A sample volume: a backing directory with some files")
        os.makedirs(os.path.join(backing, "reports"))
        with open(os.path.join(backing, "reports", "q3.txt"), "w") as f:
            f.write("Q3 revenue: 1,000,000\n")
        with open(os.path.join(backing, "app.log"), "w") as f:
            f.writelines(f"line {i}: all good\n" for i in range(2000))
        with open(os.path.join(backing, "photo.bin"), "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024))
        os.link(os.path.join(backing, "reports", "q3.txt"), os.path.join(backing, "q3-latest.txt"))
        os.symlink("reports/q3.txt", os.path.join(backing, "current-report"))
        print(json.dumps(tree(backing), indent=2))

        say("2. Serve it: applications now use the live view at " + live)
        log = open(os.path.join(work, "daemon.log"), "w")  # noqa: SIM115 - closed in finally via the process
        daemon = subprocess.Popen(
            [*VSPFS, "serve", f"{backing}={live}", "--cache-volume", cache],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not is_mounted(live):
            if daemon.poll() is not None or time.monotonic() > deadline:
                print(read(log.name), file=sys.stderr)
                raise SystemExit("demo: the daemon did not start")
            time.sleep(0.1)
        print(f"vspfs serve {backing}={live} --cache-volume {cache}   (daemon pid {daemon.pid})")
        before = tree(live)

        say("3. Take a snapshot and mount it as a read-only virtual drive")
        out = run("snapshot", "create", live, "--mount", drive, "--json", env=env, quiet=True)
        snap = json.loads(out.stdout)["snapshots"][0]
        snap_id = snap["id"]
        print(f"snapshot {snap_id} mounted at {drive}")

        say("4. Applications keep working: change, delete, add and rename through the live view")
        with open(os.path.join(live, "reports", "q3.txt"), "w") as f:
            f.write("Q3 revenue: 0 (oops, overwritten)\n")
        os.unlink(os.path.join(live, "photo.bin"))
        with open(os.path.join(live, "app.log"), "a") as f:
            f.write("line 2000: something happened after the snapshot\n")
        os.rename(os.path.join(live, "reports"), os.path.join(live, "old-reports"))
        with open(os.path.join(live, "new-file.txt"), "w") as f:
            f.write("created after the snapshot\n")
        print("live  reports/q3.txt  :", read(os.path.join(live, "old-reports", "q3.txt")).strip())
        print("drive reports/q3.txt  :", read(os.path.join(drive, "reports", "q3.txt")).strip())
        print("drive photo.bin exists:", os.path.exists(os.path.join(drive, "photo.bin")))
        print("drive new-file.txt    :", os.path.exists(os.path.join(drive, "new-file.txt")))
        after = tree(drive)
        if after != before:
            raise SystemExit(f"demo: FAILED: the virtual drive changed:\n{before}\n{after}")
        print("OK: the virtual drive shows the volume exactly as it was at the snapshot")

        say("5. Back up the virtual drive with tar while a writer keeps changing the live volume")
        stop = threading.Event()

        def writer(name: str, pause: float) -> None:
            n = 0
            while not stop.is_set():
                with open(os.path.join(live, name), "a") as f:
                    f.write(f"busy line {n}\n")
                n += 1
                if pause and n % 200 == 0:
                    stop.wait(pause)

        t = threading.Thread(target=writer, args=("app.log", 0), daemon=True)
        t.start()
        archive = os.path.join(work, "backup.tar")
        subprocess.run(["tar", "-C", drive, "-cf", archive, "."], check=True, timeout=120)
        stop.set()
        t.join(10)
        restored = os.path.join(work, "restored")
        os.mkdir(restored)
        with tarfile.open(archive) as tf:
            tf.extractall(restored, filter="fully_trusted" if hasattr(tarfile, "data_filter") else None)
        if tree(restored) != before:
            raise SystemExit("demo: FAILED: the backup differs from the snapshot")
        print(f"$ tar -C {drive} -cf {archive} .")
        size = os.path.getsize(archive)
        print(f"OK: {size} bytes archived; restored tree equals the volume at snapshot time")

        say("6. Snapshot status: what the cache file holds")
        run("status", snap_id, env=env)

        run("destroy", snap_id, env=env)

        say("7. The whole job in one command: vspfs backup (quiet period, snapshot, drive, tar, cleanup)")
        stop.clear()
        t = threading.Thread(target=writer, args=("busy.log", 1.5), daemon=True)
        t.start()  # bursts of writes with pauses: the snapshot lands in a gap
        job_archive = os.path.join(work, "job.tar")
        run(
            "backup",
            live,
            "--busy-file-wait",
            "0.5",
            "--busy-file-timeout",
            "60",
            "--",
            "tar",
            "-C",
            "{drive}",
            "-cf",
            job_archive,
            ".",
            env=env,
        )
        stop.set()
        t.join(10)
        with tarfile.open(job_archive) as tf:
            names = {m.name.removeprefix("./") for m in tf.getmembers()}
            saved = tf.extractfile("./busy.log").read().decode()  # type: ignore[union-attr]
        with open(os.path.join(live, "busy.log")) as f:
            now = f.read()
        if "new-file.txt" not in names or not now.startswith(saved) or not saved.endswith("\n"):
            raise SystemExit("demo: FAILED: the job's archive is not a point-in-time copy")
        print(f"OK: the archive holds busy.log as it was at one instant ({saved.count(chr(10))} whole lines)")

        say("8. Stop the daemon: nothing is left behind")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        leftovers = [n for n in os.listdir(cache) if n.startswith("VSP_")]
        leftovers += [n for n in os.listdir(backing) if n == ".vsp-retained"]
        if leftovers or is_mounted(live) or is_mounted(drive):
            raise SystemExit(f"demo: FAILED: left behind: {leftovers}")
        print(f"daemon stopped (exit {daemon.returncode}); no mount, no cache file, no retained file left")
        print("the backing directory now holds the live changes:", sorted(os.listdir(backing)))
        print("\ndemo: all checks passed")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for m in (drive, live):
            if is_mounted(m):
                subprocess.run(["fusermount3", "-u", "-z", m], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
