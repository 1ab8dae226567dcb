"""`vspfs backup` end to end: real daemon, real FUSE mounts, real tools.

Each test runs a `vspfs serve` subprocess on temporary directories (``Env``
from tests/test_daemon_e2e.py, through tests/daemon_helpers.py) with no
configuration file but the test's own, and drives everything through the
command line, as a user would. Job drives are mounted under the test's
directory (``--mount-dir``), so teardown finds and unmounts anything a
failing test leaves; every wait has a timeout.

* a writer that never pauses: the quiet period times out, then the job
  continues from the live volume (exit 11, report says live) or aborts (12);
  the same settings from a configuration file, and the command line winning;
* a bursty writer: the snapshot lands in a gap (no write within the quiet
  period before the snapshot instant, by the writer's own clock log) and
  holds the value of the last write before it;
* two volumes written in lockstep (generation numbers): every snapshot set
  taken after a quiet period shows equal generations; sets taken at once
  never show the second volume ahead or behind by more than the write in
  flight; the exclude list and the cache-volume rule in jobs;
* tar, rsync and restic through `vspfs backup` while writer processes start
  changing the volume the moment the command starts: each backup restored
  and compared with the content at snapshot time; nothing left behind;
* nothing left behind after failure, a killed command, cache overflow
  (tiny --max-cache-size), Ctrl-C (SIGINT to the client's process group),
  SIGKILL of the client (the daemon cleans up), and the daemon stopping;
* a live SQLite database in WAL mode: the warning appears, and the copy
  recovers to every committed row;
* configuration errors, and `vspfs changes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Env, compare, leftovers, manifest, mounts_under, sparse, wait_until
from test_backup_tools import WRITER, populate

pytestmark = [pytest.mark.mount, pytest.mark.e2e]

JOB_TIMEOUT = 120.0


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")


@contextlib.contextmanager
def daemon(prefix: str, *, two: bool = False, config: Callable[[Env], str] | None = None) -> Iterator[Env]:
    """A daemon serving backing=live (and backing2=live2), with no configuration file
    (or the one that ``config`` writes for this Env) for it and the CLI."""
    base = tempfile.mkdtemp(prefix=prefix)  # short: Unix socket paths are limited to 107 bytes
    env = Env(base)
    env.env["VSPFS_CONFIG"] = ""  # keep /etc/vspfs and ~/.config/vspfs out of the tests
    if config is not None:
        path = os.path.join(base, "vspfs.toml")
        Path(path).write_text(config(env))
        env.env["VSPFS_CONFIG"] = path
    env.backing2 = env.mkdir("backing2")  # type: ignore[attr-defined]
    env.live2 = env.mkdir("live2")  # type: ignore[attr-defined]
    specs = [f"{env.backing}={env.live}"]
    if two:
        specs.append(f"{env.backing2}={env.live2}")  # type: ignore[attr-defined]
    try:
        env.start(*specs)
        yield env
    finally:
        env.teardown()
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


_count = [0]


def backup(
    env: Env,
    volumes: list[str],
    command: list[str],
    *options: str,
    glob: tuple[str, ...] = (),
    timeout: float = JOB_TIMEOUT,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run `vspfs [glob] backup VOLUMES OPTIONS -- COMMAND` to the end; (process, JSON report)."""
    _count[0] += 1
    report = os.path.join(env.base, f"report{_count[0]}.json")
    jobs = os.path.join(env.base, "jobs")
    done = env.run(
        *glob, "backup", *volumes, "--mount-dir", jobs, "--report-file", report, *options, "--", *command,
        timeout=timeout,
    )  # fmt: skip
    assert os.path.exists(report), f"no report: {done.returncode} {done.stderr}{env.log_text()}"
    return done, json.loads(Path(report).read_text())


def nothing_left(env: Env) -> None:
    """No drive, cache file, retained object or job directory remains; the live view serves on.

    Waits a little: after a client was killed, the daemon cleans up on its own
    (the cache file goes before the retained entries are released).
    """
    jobs = os.path.join(env.base, "jobs")
    lives = sorted({env.live, getattr(env, "live2", env.live)})

    def clean() -> bool:
        state = leftovers(env)
        return (
            sorted(set(state["mounts"])) in ([env.live], lives)
            and state["cache_files"] == []
            and state["retained"] in ([], None)
            and not os.path.exists(jobs)
        )

    deadline = time.monotonic() + 30
    while not clean() and time.monotonic() < deadline:
        time.sleep(0.1)
    state = leftovers(env)
    assert sorted(set(state["mounts"])) in ([env.live], lives), state
    assert state["cache_files"] == [], state
    assert state["retained"] in ([], None), state
    assert not os.path.exists(jobs), os.listdir(jobs)
    assert env.json("list")["snapshots"] == []


# ------------------------------------------------------------ quiet period

BUSY = r"""
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    os.write(fd, b"busy\n")
    time.sleep(0.01)
"""


def test_never_pausing_writer_times_out_then_continues_or_aborts() -> None:
    with daemon("vspq") as env:
        stop = os.path.join(env.base, "stop")
        writer = subprocess.Popen([sys.executable, "-c", BUSY, os.path.join(env.live, "busy.log"), stop])
        try:
            wait_until(lambda: os.path.exists(os.path.join(env.live, "busy.log")), 30, "the writer")
            listing = os.path.join(env.base, "listing")
            quick = ("--busy-file-wait", "1", "--busy-file-timeout", "2")
            t0 = time.monotonic()
            done, rep = backup(
                env, [env.live], ["sh", "-c", 'ls "$1" > "$2"', "_", "{drive}", listing], *quick
            )
            assert done.returncode == 11, done.stderr
            assert 1.9 < time.monotonic() - t0 < 30
            assert rep["quiet_period"]["found"] is False
            [vol] = rep["volumes"]
            assert (vol["source"], vol["live_reason"], vol["drive"]) == (
                "live",
                "quiet period not found",
                None,
            )
            assert rep["command"]["argv"][4] == env.live  # {drive} became the live view
            assert "busy.log" in Path(listing).read_text()
            assert "WITHOUT a snapshot" in done.stderr and "LIVE" in done.stderr

            marker = os.path.join(env.base, "ran")
            done, rep = backup(env, [env.live], ["touch", marker], *quick, "--on-timeout", "abort")
            assert done.returncode == 12, done.stderr
            assert rep["ended_by"] == "quiet-timeout" and rep["command"]["exit_code"] is None
            assert not os.path.exists(marker), "the command ran although the job aborted"

            # the same from a configuration file, and the command line beating it
            cfg = os.path.join(env.base, "vspfs.toml")
            Path(cfg).write_text(
                "[backup]\nbusy_file_wait = 1\nbusy_file_timeout = 1.5\non_timeout = 'abort'\n"
            )
            done, rep = backup(env, [env.live], ["touch", marker], glob=("--config", cfg))
            assert done.returncode == 12 and rep["quiet_period"]["busy_file_timeout"] == 1.5, done.stderr
            done, rep = backup(
                env, [env.live], ["touch", marker], "--on-timeout", "continue", glob=("--config", cfg)
            )
            assert done.returncode == 11 and os.path.exists(marker), done.stderr

            # `snapshot create` waits for a quiet period only when asked, and then gives up with 12
            quiet = ("--busy-file-wait", "1", "--busy-file-timeout", "1.5")
            done = env.run("snapshot", "create", env.live, *quiet)
            assert done.returncode == 12 and "no quiet period of 1 s" in done.stderr, done.stderr
            (snap,) = env.json("snapshot", "create", env.live)["snapshots"]
            env.json("destroy", snap["id"])
        finally:
            Path(stop).touch()
            writer.wait(timeout=30)
        nothing_left(env)


BURSTY = r"""
import os, sys, time
path, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
out = open(log, "w", buffering=1)
n = 0
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    burst_end = time.monotonic() + 0.4
    while time.monotonic() < burst_end:
        n += 1
        t0 = time.time_ns()
        os.pwrite(fd, b"%012d" % n, 0)
        out.write("%d %d %d\n" % (n, t0, time.time_ns()))
        time.sleep(0.01)
    time.sleep(1.2)
"""


def test_bursty_writer_snapshot_lands_in_a_gap() -> None:
    wait = 0.6
    with daemon("vspg") as env:
        log, stop = os.path.join(env.base, "writes.log"), os.path.join(env.base, "stop")
        target = os.path.join(env.live, "counter")
        writer = subprocess.Popen([sys.executable, "-c", BURSTY, target, log, stop])
        seen = os.path.join(env.base, "seen")

        def writes() -> list[tuple[int, ...]]:
            return [tuple(map(int, line.split())) for line in Path(log).read_text().splitlines() if line]

        try:
            wait_until(lambda: os.path.exists(log) and len(writes()) >= 3, 30, "a burst")
            done, rep = backup(
                env, [env.live], ["cp", "{drive}/counter", seen], "--busy-file-wait", str(wait),
                "--busy-file-timeout", "20", "--progress",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            created = rep["volumes"][0]["created_ns"]
            # the next burst: the snapshot sits in a gap between writes
            wait_until(lambda: any(w[1] > created for w in writes()), 30, "the next burst")
        finally:
            Path(stop).touch()
            writer.wait(timeout=30)
        q = rep["quiet_period"]
        assert q["found"] is True and q["quiet_for_s"] >= wait and q["waited_s"] > 0.05, q
        assert "\x1b[Kvspfs backup: waiting for 0.6 s without writes" in done.stderr  # --progress
        before = [w for w in writes() if w[1] < created]
        assert before, "the snapshot came before any write"
        # no write was in flight or done within the quiet period before the snapshot ...
        slack = 0.05e9  # the writer's clock readings bracket its write
        assert all(end < created - wait * 1e9 + slack for _n, _start, end in before), "a write in the period"
        # ... and the snapshot holds exactly what the last write before it left
        assert int(Path(seen).read_bytes()) == before[-1][0]
        nothing_left(env)


# --------------------------------------------------------- two volumes

LOCKSTEP = r"""
import os, sys, time
a, b, stop, fast = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
fa = os.open(a, os.O_WRONLY | os.O_CREAT, 0o644)
fb = os.open(b, os.O_WRONLY | os.O_CREAT, 0o644)
g = 0
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    g += 1
    os.pwrite(fa, b"%010d" % g, 0)
    os.pwrite(fb, b"%010d" % g, 0)
    time.sleep(0.0005 if os.path.exists(fast) else 0.4)
"""


@pytest.fixture(scope="module")
def two() -> Iterator[Env]:
    with daemon("vsp2", two=True) as env:
        yield env


def test_two_volumes_in_lockstep_every_set_is_consistent(two: Env) -> None:
    env = two
    stop = os.path.join(env.base, "stop-lockstep")
    a, b = os.path.join(env.live, "gen"), os.path.join(env.live2, "gen")  # type: ignore[attr-defined]
    fast = os.path.join(env.base, "fast-lockstep")  # once it exists, the writer hardly pauses
    writer = subprocess.Popen([sys.executable, "-c", LOCKSTEP, a, b, stop, fast])
    pairs: list[tuple[str, int, int]] = []
    try:
        wait_until(lambda: os.path.exists(b) and os.path.getsize(b) == 10, 30, "the lockstep writer")
        out = os.path.join(env.base, "gens")
        for i in range(10):
            wait = "0.2" if i < 6 else "0"  # then at once, while the writer runs flat out
            if i == 6:
                Path(fast).touch()
            done, rep = backup(
                env, [env.live, env.live2], ["sh", "-c", 'cat "$1/gen" "$2/gen" > "$3"', "_",
                "{drive:live}", "{drive:live2}", out], "--busy-file-wait", wait,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert [v["source"] for v in rep["volumes"]] == ["snapshot", "snapshot"]
            assert rep["volumes"][0]["created_ns"] == rep["volumes"][1]["created_ns"]  # one instant
            text = Path(out).read_text()
            pairs.append((wait, int(text[:10]), int(text[10:])))
    finally:
        Path(stop).touch()
        writer.wait(timeout=30)
    for wait, ga, gb in pairs:
        if wait != "0":
            assert ga == gb, f"a set after a quiet period saw generations {ga} and {gb}: {pairs}"
        else:
            assert ga - gb in (0, 1), f"a set taken at once saw generations {ga} and {gb}: {pairs}"
    assert pairs[-1][1] > pairs[0][1], f"the writer did not advance: {pairs}"
    print(f"generations per set: {pairs}")
    nothing_left(env)


def test_exclude_list_and_cache_volume_rules_in_jobs(two: Env) -> None:
    env = two
    live2 = env.live2  # type: ignore[attr-defined]
    Path(env.live, "f").write_text("data\n")
    Path(live2, "g").write_text("more\n")
    time.sleep(0.3)
    out = os.path.join(env.base, "env.json")
    done, rep = backup(
        env, [env.live, live2], ["sh", "-c", 'printf %s "$VSPFS_DRIVES" > "$1"', "_", out],
        "--busy-file-wait", "0.1", "--exclude-volume", live2,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # excluded on purpose: not "without snapshot" (11)
    first, second = rep["volumes"]
    assert first["source"] == "snapshot" and first["drive"].startswith(os.path.join(env.base, "jobs"))
    assert (
        second["source"] == "live" and second["excluded"] is True and "Exclude List" in second["live_reason"]
    )
    assert json.loads(Path(out).read_text()) == {env.live: first["drive"], live2: live2}

    # the job's own Cache File Volume List names the volume being snapshotted: rule 3 refuses it
    marker = os.path.join(env.base, "ran")
    opts = ("--busy-file-wait", "0", "--cache-volume", env.live)
    done, rep = backup(env, [env.live], ["touch", marker], *opts)
    assert done.returncode == 11, done.stderr
    assert "no eligible cache volume" in rep["snapshot_error"] and os.path.exists(marker)
    assert rep["volumes"][0]["live_reason"].startswith("could not snapshot")
    os.unlink(marker)
    done, rep = backup(env, [env.live], ["touch", marker], *opts, "--on-error", "abort")
    assert done.returncode == 13 and not os.path.exists(marker), done.stderr
    assert rep["ended_by"] == "snapshot-error"
    # cache sizes for every volume, and for one
    done, rep = backup(
        env, [env.live, live2], ["true"], "--busy-file-wait", "0", "--max-cache-size", "64M",
        "--max-cache-size", f"{live2}=1M", "--cache-size", "backing2=512K",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [v["cache_max"] for v in rep["volumes"]] == [64 << 20, 1 << 20]
    assert [v["cache_allocated"] for v in rep["volumes"]][1] == 512 << 10
    # a cache file volume list that is fine: the cache file goes there
    cv = env.mkdir("jobcache")
    done, rep = backup(env, [env.live], ["true"], "--busy-file-wait", "0", "--cache-volume", cv)
    assert done.returncode == 0 and os.path.dirname(rep["volumes"][0]["cache_file"]) == cv, done.stderr
    nothing_left(env)


def test_daemon_exclude_list_from_the_configuration_file() -> None:
    with daemon("vspx", config=lambda e: f"exclude_volumes = [{json.dumps(e.backing)}]\n") as env:
        done = env.run("snapshot", "create", env.live)
        assert done.returncode == 4 and "Exclude List" in done.stderr, done.stderr
        done, rep = backup(env, [env.live], ["true"], "--busy-file-wait", "0")
        assert done.returncode == 0 and rep["volumes"][0]["excluded"] is True, done.stderr
        assert env.json("status")["daemon"]["exclude_volumes"] == [env.backing]


# ------------------------------------------------------- tools and writers

# Writer processes (the WRITER of test_backup_tools) that wait for a go file:
# the job's command creates it as it starts, so the volume is at rest when
# the snapshot is taken (its manifest is known) and busy while the tool reads.
GATED = r"""
import os, sys, time
go = sys.argv.pop(5)
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
"""


class GatedWriters:
    def __init__(
        self, env: Env, tag: str, roles: tuple[str, ...] = ("data", "names"), root: str | None = None
    ) -> None:
        self.go = os.path.join(env.base, f"go-{tag}")
        self.stopfile = os.path.join(env.base, f"stop-{tag}")
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    GATED + WRITER,
                    root or env.live,
                    role,
                    self.stopfile,
                    str(i + 20),
                    self.go,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, role in enumerate(roles)
        ]

    def stop(self) -> list[dict[str, Any]]:
        Path(self.stopfile).touch()
        Path(self.go).touch()
        reports = []
        for p in self.procs:
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=30)
                pytest.fail("a writer did not stop (hung on the live view?)")
            assert p.returncode == 0, err
            reports.append(json.loads(out))
        return reports


def settle(root: str) -> None:
    """Undo the one rename the writers leave half done between rounds (x <-> x-moved)."""
    if os.path.exists(os.path.join(root, "x-moved")):
        os.rename(os.path.join(root, "x-moved"), os.path.join(root, "x"))


def started(go: str, command: str) -> list[str]:
    """A job command that releases the writers, gives them a head start, then runs ``command``."""
    return ["sh", "-c", f'touch "{go}" && sleep 0.5 && {command}']


def test_tar_rsync_restic_jobs_while_writers_run() -> None:
    need("tar", "rsync", "restic")
    with daemon("vspt") as env:
        work = env.mkdir("work")
        env.env.update(
            RESTIC_PASSWORD="vspfs-test",
            RESTIC_REPOSITORY=os.path.join(work, "restic-repo"),
            RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"),
        )
        init = subprocess.run(
            ["restic", "init", "-q"], env=env.env, capture_output=True, text=True, timeout=60
        )
        assert init.returncode == 0, init.stderr
        archive = os.path.join(work, "backup.tar")
        rsynced = os.path.join(work, "rsync-restored")
        jobs = {
            "tar": f'tar --xattrs --sparse --numeric-owner -C "$1" -cf {archive} .',
            "rsync": f'rsync -aHAX --sparse --numeric-ids "$1/" {rsynced}/',
            "restic": 'cd "$1" && restic backup -q .',
        }
        timings = {}
        previous = None
        for tool, command in jobs.items():
            # a fresh tree for each round (the writers create names that a second run would find taken)
            if previous is not None:
                shutil.rmtree(previous)
            previous = tree = os.path.join(env.live, tool)
            os.mkdir(tree)
            populate(tree)
            expected = manifest(env.live)
            writers = GatedWriters(env, tool, root=tree)
            try:
                t0 = time.monotonic()
                done, rep = backup(
                    env,
                    [env.live],
                    [*started(writers.go, command), "_", "{drive}"],
                    "--busy-file-wait",
                    "0.3",
                )
                timings[tool] = round(time.monotonic() - t0, 2)
            finally:
                reports = writers.stop()
            assert done.returncode == 0, f"{tool}: {done.stderr}"
            [vol] = rep["volumes"]
            assert vol["source"] == "snapshot" and vol["state"] == "valid", vol
            assert vol["chunks_preserved"] > 0 or vol["pinned_bytes"] > 0, "the writers changed nothing"
            for r in reports:
                assert r["errors"] == {}, f"{tool}: a writer got errors through the live view: {r}"
                assert sum(r["ops"].values()) >= 5, f"{tool}: the writers hardly ran: {r}"
            nothing_left(env)

            if tool == "tar":
                restored = env.mkdir("tar-restored")
                x = subprocess.run(
                    ["tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-p", "-C", restored,
                     "-xf", archive],
                    capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                assert x.returncode == 0, x.stderr
            elif tool == "rsync":
                restored = rsynced
            else:
                restored = os.path.join(work, "restic-restored")
                x = subprocess.run(
                    ["restic", "restore", "latest", "--target", restored, "-q"],
                    env=env.env, capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                assert x.returncode == 0, x.stderr
            got = manifest(restored)
            problems = compare(expected, got)
            assert problems == [], f"{tool}: restored tree differs from the snapshot:\n" + "\n".join(
                problems[:40]
            )
            if tool != "restic":  # restic 0.14 restores no holes
                assert sparse(got[f"{tool}/sparse.img"]), tool
        print(f"backup job timings (s): {timings}")
        assert env.stop() == 0, env.log_text()
        assert leftovers(env) == {"mounts": [], "cache_files": [], "retained": None}


def test_nothing_left_after_failure_overflow_ctrl_c_and_kill() -> None:
    with daemon("vspc") as env:
        populate(env.live, seed=3)
        quick = ("--busy-file-wait", "0.2")

        # the command fails, or is killed: its own status, and a clean slate
        done, _ = backup(env, [env.live], ["sh", "-c", "exit 3"], *quick)
        assert done.returncode == 3, done.stderr
        nothing_left(env)
        done, _ = backup(env, [env.live], ["sh", "-c", "kill -KILL $$"], *quick)
        assert done.returncode == 128 + 9, done.stderr
        nothing_left(env)

        # overflow: a tiny cache maximum while the command itself rewrites the volume chunk by chunk
        big = os.path.join(env.live, "big1.bin")
        rewrite = (
            f"for i in 0 1 2 3 4 5 6 7 8 9; do dd if=/dev/urandom of={big} bs=64k count=1 seek=$i "
            "conv=notrunc status=none; sleep 0.3; done; exec sleep 60"
        )
        t0 = time.monotonic()
        done, rep = backup(env, [env.live], ["sh", "-c", rewrite], *quick, "--max-cache-size", "300K")
        elapsed = time.monotonic() - t0
        assert done.returncode == 10, done.stderr
        assert elapsed < 30, "the job did not end when its snapshot became invalid"
        [vol] = rep["volumes"]
        assert vol["state"] == "invalid" and "maximum" in vol["invalid_reason"], vol
        assert any("80% full" in w for w in rep["warnings"]), rep["warnings"]
        assert "warning: " in done.stderr and "80% full" in done.stderr  # shown while the job ran
        assert "became invalid" in done.stderr and "incomplete" in done.stderr
        nothing_left(env)

        # Ctrl-C: SIGINT to the client's whole process group, with writers running
        settle(env.live)
        go = os.path.join(env.base, "go-ctrl-c")
        for sig, code in ((signal.SIGINT, 130), (signal.SIGKILL, None)):
            writers = GatedWriters(env, f"sig{sig}")
            report = os.path.join(env.base, f"report-sig{sig}.json")
            client = subprocess.Popen(
                [sys.executable, "-m", "vspfs.cli", "backup", env.live, *quick, "--mount-dir",
                 os.path.join(env.base, "jobs"), "--report-file", report, "--", "sh", "-c",
                 f'touch "{writers.go}" "{go}"; exec sleep 60'],
                env=env.env, start_new_session=True, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                wait_until(lambda c=client: os.path.exists(go) or c.poll() is not None, 60, "the command")
                assert client.poll() is None, client.stderr.read() if client.stderr else ""
                assert len(env.cache_files()) == 1 and mounts_under(os.path.join(env.base, "jobs"))
                time.sleep(0.3)  # the writers change things meanwhile
                os.killpg(client.pid, sig)
                try:
                    client.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"vspfs backup did not end within 60 s of {sig!r}")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(client.pid, signal.SIGKILL)
                writers.stop()
                os.unlink(go)
            if code is not None:
                assert client.returncode == code
                rep = json.loads(Path(report).read_text())
                assert rep["ended_by"] == "interrupted" and rep["exit_code"] == code
            # after SIGKILL of the client only the daemon can clean up: it must
            wait_until(lambda: env.cache_files() == [], 30, f"the daemon to clean up after {sig!r}")
            nothing_left(env)
            settle(env.live)

        # the daemon stops during a job: the job ends (15), the daemon leaves nothing
        client = subprocess.Popen(
            [sys.executable, "-m", "vspfs.cli", "backup", env.live, *quick, "--mount-dir",
             os.path.join(env.base, "jobs"), "--", "sh", "-c", f'touch "{go}"; exec sleep 60'],
            env=env.env, start_new_session=True, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_until(lambda: os.path.exists(go) or client.poll() is not None, 60, "the job's command")
            assert env.stop() == 0, env.log_text()
            assert client.wait(timeout=60) == 15
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
        assert leftovers(env) == {"mounts": [], "cache_files": [], "retained": None}


def test_sigterm_to_the_client_alone_stops_the_commands_children_too() -> None:
    """SIGTERM sent to `vspfs backup` only (not its group) reaches what its command started."""
    with daemon("vspk") as env:
        populate(env.live, seed=5)
        pidfile = os.path.join(env.base, "child.pid")
        client = subprocess.Popen(
            [sys.executable, "-m", "vspfs.cli", "backup", env.live, "--busy-file-wait", "0.2", "--mount-dir",
             os.path.join(env.base, "jobs"), "--", "sh", "-c", f'sleep 300 & echo $! > "{pidfile}"; wait'],
            env=env.env, start_new_session=True, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        child = 0
        try:
            wait_until(
                lambda: (os.path.exists(pidfile) and os.path.getsize(pidfile) > 0) or client.poll(),
                60,
                "the command's child",
            )
            assert client.poll() is None, client.stderr.read() if client.stderr else ""
            child = int(Path(pidfile).read_text())
            os.kill(client.pid, signal.SIGTERM)
            assert client.wait(timeout=60) == 143
            wait_until(lambda: not os.path.exists(f"/proc/{child}"), 10, "the command's child to end")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            if child:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        nothing_left(env)


# ---------------------------------------------------------------- databases


def test_live_sqlite_database_with_wal_is_warned_about() -> None:
    with daemon("vspd") as env:
        db = sqlite3.connect(os.path.join(env.live, "app.db"))
        try:
            assert db.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
            db.execute("create table t (x)")
            for i in range(50):
                db.execute("insert into t values (?)", (i,))
                db.commit()
            assert os.path.exists(os.path.join(env.live, "app.db-wal"))
            copy = env.mkdir("copy")
            report = os.path.join(env.base, "report.json")
            done = env.run(
                "backup", env.live, "--busy-file-wait", "0.2", "--report-file", report, "--",
                "sh", "-c", 'cp "$1/app.db" "$1/app.db-wal" "$2/"', "_", "{drive}", copy,
            )  # fmt: skip
            rep = json.loads(Path(report).read_text())
        finally:
            db.close()
        assert done.returncode == 0, done.stderr
        [vol] = rep["volumes"]
        assert {"app.db", "app.db-wal"} <= set(vol["open_for_write"]), vol
        assert [d["kind"] for d in vol["databases"]] == ["SQLite"] and vol["databases"][0]["path"] == "app.db"
        [warning] = [w for w in rep["warnings"] if "SQLite" in w]
        assert "crash-consistent" in warning and ".backup" in warning
        assert "warning:" in done.stderr and "SQLite" in done.stderr
        # crash-consistent means: the copy recovers, with every committed row
        assert sqlite3.connect(os.path.join(copy, "app.db")).execute("select count(*) from t").fetchone() == (
            50,
        )
        assert rep["mount_dir"].startswith(os.path.join(env.state, "jobs-"))  # the default place
        assert not os.path.exists(rep["mount_dir"])  # the job's own directory is gone too
        assert env.cache_files() == []


# ------------------------------------------------------------- configuration


def test_configuration_errors_stop_the_job_before_it_starts() -> None:
    with daemon("vspf") as env:
        cfg = os.path.join(env.base, "bad.toml")
        for text, key in (
            ("[backup]\nbusy_file_wiat = 1\n", "backup.busy_file_wiat"),
            ("[backup]\nbusy_file_timeout = 'soon'\n", "backup.busy_file_timeout"),
            ("[snapshot]\nmax_cache_size = '10 parsecs'\n", "snapshot.max_cache_size"),
            ('[volumes."/srv"]\nbusy_file_wait = 1\n', 'volumes."/srv".busy_file_wait'),
            ("[backup\n", "not valid TOML"),
        ):
            Path(cfg).write_text(text)
            done = env.run("--config", cfg, "backup", env.live, "--", "true")
            assert done.returncode == 2, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"vspfs: error: config file {cfg}"), done.stderr
            assert key in lines[0], lines[0]
        done = env.run("backup", os.path.join(env.base, "cache"), "--", "true")
        assert done.returncode == 2 and "is not a served volume" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        done = env.run("backup", env.live, "--mount-dir", os.path.join(env.live, "drives"), "--", "true")
        assert done.returncode == 2 and "inside served volume" in done.stderr, done.stderr
        assert env.cache_files() == [] and env.json("list")["snapshots"] == []


# ------------------------------------------------------------------ changes


def test_changes_since_a_snapshot() -> None:
    with daemon("vspn") as env:
        root = env.live
        for d in ("docs", "src/pkg", "old"):
            os.makedirs(os.path.join(root, d))
        for f in ("docs/readme.txt", "src/pkg/mod.py", "old/x", "keep.txt", "edit.txt", "gone.txt"):
            Path(root, f).write_text(f"{f}\n")
        (snap,) = env.json("snapshot", "create", env.live)["snapshots"]
        with open(os.path.join(root, "edit.txt"), "a") as f:
            f.write("more\n")
        os.unlink(os.path.join(root, "gone.txt"))
        os.rename(os.path.join(root, "docs/readme.txt"), os.path.join(root, "docs/README.md"))
        os.rename(os.path.join(root, "src/pkg"), os.path.join(root, "pkg"))
        os.unlink(os.path.join(root, "old/x"))
        os.rmdir(os.path.join(root, "old"))
        os.makedirs(os.path.join(root, "new/sub"))
        Path(root, "new/sub/file").write_text("new\n")
        os.chmod(os.path.join(root, "keep.txt"), 0o600)
        got = env.json("changes", snap["id"])
        assert got == {
            "snapshot": snap["id"],
            "created": ["new", "new/sub", "new/sub/file"],
            "modified": ["edit.txt", "keep.txt"],
            "deleted": ["gone.txt", "old", "old/x"],
            "renamed": [
                {"from": "docs/readme.txt", "to": "docs/README.md"},
                {"from": "src/pkg", "to": "pkg"},
            ],
        }
        human = env.ok("changes", snap["id"]).splitlines()
        assert "M edit.txt" in human and "D gone.txt" in human and "A new/sub/file" in human
        assert "R src/pkg -> pkg" in human
        done = env.run("changes", "no-such-snapshot")
        assert done.returncode == 2 and "no snapshot" in done.stderr

        # more than one control message of changes: the client pages through them
        os.mkdir(os.path.join(root, "many"))
        names = {f"many/{i:05d}-" + "n" * 150 for i in range(2000)}
        for name in names:
            os.mknod(os.path.join(root, name))
        got = env.json("changes", snap["id"])
        assert set(got["created"]) == {"many", *names, "new", "new/sub", "new/sub/file"}
        env.json("destroy", snap["id"])
