"""`vspfs backup` and `vspfs changes`: the backup workflow from the command line.

``vspfs backup VOLUME... [options] -- COMMAND ARGS...`` is the whole job:
quiet period, snapshot set, virtual drives, the backup command run against
them, then the snapshots destroyed and the cache files removed, whatever
happens, and a report.

The daemon owns the job (vspfs/jobs.py): this client starts it on a
connection that stays open for the job's lifetime, follows its progress,
runs the command, and ends the job. If this process dies, the daemon sees
the connection close and cleans up by itself; if it is interrupted (Ctrl-C,
SIGTERM, SIGHUP; on Windows Ctrl-C, Ctrl-Break), it stops the command, ends
the job properly and still prints the report.

Exit status (docs/backup.md): the command's own on success, otherwise one
of the 10-19 codes below, 128+N after signal N, or the usual CLI codes for
errors before anything was started (2 usage, 3 no daemon, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import click

from vspfs import config as config_mod
from vspfs import procs, winplatform
from vspfs.errors import UsageError, VspError

# Exit codes of `vspfs backup` (docs/backup.md, docs/cli.md).
EXIT_SNAPSHOT_INVALID = 10  # a snapshot became invalid during the backup: the copy is incomplete
EXIT_NO_SNAPSHOT = 11  # the command succeeded, but from the live volume for at least one volume
EXIT_QUIET_ABORT = 12  # no quiet period within --busy-file-timeout, and --on-timeout abort
EXIT_SNAPSHOT_ABORT = 13  # the snapshot could not be taken, and --on-error abort
EXIT_COMMAND_NOT_STARTED = 14  # the command could not be started (not found, not executable)
EXIT_JOB_LOST = 15  # the daemon ended the job (it stopped, failed, or could not be reached)

#: how often the client asks the daemon how the job is doing (seconds)
POLL = 0.25
#: after Ctrl-C, how long the command may take to stop by itself before each step of
#: STOP_STEPS (SIGINT, SIGTERM, SIGKILL; on Windows Ctrl-Break, Ctrl-Break, TerminateProcess)
STOP_GRACE = (1.0, 10.0, 5.0)
#: the ways of stopping the command, gentlest first (see :func:`stop_command`)
INTERRUPT, TERMINATE, KILL = "interrupt", "terminate", "kill"
STOP_STEPS = (INTERRUPT, TERMINATE, KILL)
#: how long a status request may take
STATUS_TIMEOUT = 15.0
#: how long ending a job may take (unmounting, destroying, removing cache files)
FINISH_TIMEOUT = 180.0

#: {drive}, {drive:VOLUME}, and their synonyms {path}, {path:VOLUME} (DESIGN.md names both)
_DRIVE = re.compile(r"\{(drive|path)(?::([^{}]*))?\}")


def _interrupt_signals() -> tuple[int, ...]:
    """The signals that interrupt a backup, those of them that exist here (Windows: SIGINT,
    SIGTERM that nothing sends, and SIGBREAK for a console's Ctrl-Break)."""
    return tuple(
        getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, n)
    )


# ---------------------------------------------------------------- command line


def drive_names(argv: Sequence[str]) -> list[str | None]:
    """The drives an argument list refers to: None for ``{drive}``, a name for ``{drive:NAME}``."""
    return [m.group(2) for arg in argv for m in _DRIVE.finditer(arg)]


def substitute(argv: Sequence[str], drives: dict[str, str]) -> list[str]:
    """Replace ``{drive}`` (the only volume) and ``{drive:VOLUME}`` in every argument
    (``{path}`` and ``{path:VOLUME}`` are the same).

    ``drives`` maps each volume, as named on the command line, to the
    directory the command must read; ``{drive:X}`` may also name a volume
    by its last path component. Other braces are left alone, so
    ``find {drive} -exec ... {} +`` works.
    """
    aliases = drive_aliases(list(drives))

    def one(match: re.Match[str]) -> str:
        word, name = match.group(1), match.group(2)
        if name is None:
            if len(drives) != 1:
                raise UsageError(
                    f"{{{word}}} is ambiguous with {len(drives)} volumes: write {{{word}:VOLUME}} "
                    f"with one of {', '.join(drives)}"
                )
            return next(iter(drives.values()))
        if name not in aliases:
            raise UsageError(f"{{{word}:{name}}} names no volume of this job (volumes: {', '.join(drives)})")
        return drives[aliases[name]]

    return [_DRIVE.sub(one, arg) for arg in argv]


def drive_aliases(names: Sequence[str]) -> dict[str, str]:
    """What ``{drive:X}`` may say for each volume: the name as typed, or its last component.

    Maps each alias to the volume as typed; a last component shared by two
    volumes is no alias.
    """
    aliases = {n: n for n in names}
    tails: dict[str, list[str]] = {}
    for n in names:
        tail = os.path.basename(n.rstrip("/"))
        if tail and tail not in aliases:
            tails.setdefault(tail, []).append(n)
    for tail, owners in tails.items():
        if len(set(owners)) == 1:
            aliases[tail] = owners[0]
    return aliases


def check_command(argv: Sequence[str], names: Sequence[str]) -> None:
    """Refuse, before anything is started, a command that cannot run or names an unknown drive."""
    if not argv:
        raise UsageError("no command: give the backup command after --, e.g. -- tar -C {drive} -cf OUT .")
    for name in drive_names(argv):
        if name is None and len(names) != 1:
            raise UsageError(
                f"{{drive}} is ambiguous with {len(names)} volumes: write {{drive:VOLUME}} "
                f"with one of {', '.join(names)}"
            )
        if name is not None and name not in drive_aliases(names):
            raise UsageError(f"{{drive:{name}}} names no volume of this job (volumes: {', '.join(names)})")
    prog = argv[0]
    if _DRIVE.search(prog):
        return
    if "/" in prog:
        if not (os.path.isfile(prog) and os.access(prog, os.X_OK)):
            raise UsageError(f"command {prog} is not an executable file")
    elif shutil.which(prog) is None:
        raise UsageError(f"command {prog} not found in PATH")


@dataclass
class Options:
    """A job's settings after command line, configuration file and defaults."""

    busy_file_wait: float
    busy_file_timeout: float
    on_timeout: str
    on_error: str
    cache_size: int | str | None
    max_cache_size: int | str | None
    policy: str
    cache_volumes: list[str]
    exclude_volumes: list[str]
    volume_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def resolve_sizes(
    cli: dict[str, Any], config: config_mod.Config
) -> tuple[int | str | None, int | str | None, dict[str, dict[str, Any]]]:
    """(initial size, maximum, per-volume sizes) from --cache-size / --max-cache-size and the file.

    Each option may be given several times, as ``SIZE`` (every volume) or
    ``VOLUME=SIZE`` (that volume). A plain size on the command line beats the
    file's default and its per-volume sizes; ``VOLUME=SIZE`` beats both.
    """
    per_volume = config.volume_options()
    defaults: dict[str, int | str | None] = {}
    for key in ("cache_size", "max_cache_size"):
        option = "--" + key.replace("_", "-")
        values = cli.get(key) or ()
        if isinstance(values, str):
            values = (values,)
        default = config.get("snapshot", key)
        chosen: dict[str, int | str | None] = {}
        plain = False
        for value in values:
            vol, sep, size = value.rpartition("=")
            try:
                checked = config_mod.check_size(size if sep else value, allow_none=key == "max_cache_size")
            except ValueError as exc:
                raise UsageError(f"{option} {exc}") from None
            if sep and vol:
                chosen[_volume_arg(vol)] = checked
            else:
                default, plain = checked, True
        if plain:
            for opts in per_volume.values():
                opts.pop(key, None)
        for vol, size in chosen.items():
            per_volume.setdefault(vol, {})[key] = size
        defaults[key] = default
    return defaults["cache_size"], defaults["max_cache_size"], per_volume


def resolve_options(cli: dict[str, Any], config: config_mod.Config) -> Options:
    """Command-line values win; then the configuration file; then the documented defaults."""

    def pick(key: str, section: str) -> Any:
        value = cli.get(key)
        return config.get(section, key) if value is None or value == () else value

    def paths(key: str) -> list[str]:
        value = cli.get(key)
        if value:
            return [os.path.abspath(os.path.expanduser(v)) for v in value]
        return list(config.get("backup", key) or [])

    initial, maximum, per_volume = resolve_sizes(cli, config)
    return Options(
        busy_file_wait=float(pick("busy_file_wait", "backup")),
        busy_file_timeout=float(pick("busy_file_timeout", "backup")),
        on_timeout=pick("on_timeout", "backup"),
        on_error=pick("on_error", "backup"),
        cache_size=initial,
        max_cache_size=maximum,
        policy=pick("policy", "snapshot"),
        cache_volumes=paths("cache_volumes"),
        exclude_volumes=paths("exclude_volumes"),
        volume_options=per_volume,
    )


# ------------------------------------------------------------------ outcome


@dataclass
class CommandResult:
    """How the backup command ended."""

    argv: list[str]
    returncode: int | None = None  # None: it never ran
    duration_s: float = 0.0
    error: str | None = None  # why it could not be started

    @property
    def exit_code(self) -> int | None:
        """The shell's convention: 128+N for a command killed by signal N."""
        if self.returncode is None:
            return None
        return 128 - self.returncode if self.returncode < 0 else self.returncode


def outcome(
    report: dict[str, Any] | None,
    command: CommandResult | None,
    *,
    interrupted: int | None = None,
    lost: str | None = None,
) -> tuple[int, str]:
    """The job's exit status and a one-line verdict.

    Precedence: an interruption; an aborted job (12, 13); a command that could
    not start (14); a job the daemon ended (15); an invalid snapshot (10,
    whatever the command said: its copy is incomplete); the command's own
    failure; a backup made without a snapshot (11); success.
    """
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        return 128 + interrupted, f"interrupted by {name}: the backup is incomplete"
    ended_by = (report or {}).get("ended_by")
    if ended_by == "quiet-timeout":
        return EXIT_QUIET_ABORT, "aborted: no quiet period within --busy-file-timeout (--on-timeout abort)"
    if ended_by == "snapshot-error":
        why = (report or {}).get("snapshot_error") or "see the daemon log"
        return EXIT_SNAPSHOT_ABORT, f"aborted: could not snapshot: {why} (--on-error abort)"
    if command is not None and command.error is not None:
        return EXIT_COMMAND_NOT_STARTED, f"the command could not be started: {command.error}"
    if lost is not None:
        return EXIT_JOB_LOST, f"the job was ended by the daemon: {lost}"
    vols = (report or {}).get("volumes") or []
    invalid = [v for v in vols if v.get("source") == "snapshot" and v.get("state") == "invalid"]
    if invalid:
        v = invalid[0]
        return EXIT_SNAPSHOT_INVALID, (
            f"the snapshot of {v.get('volume')} became invalid during the backup "
            f"({v.get('invalid_reason')}): the backup is incomplete"
        )
    code = command.exit_code if command is not None else None
    if code:
        return code, f"the command failed with exit status {code}"
    live = [v for v in vols if v.get("source") == "live" and not v.get("excluded")]
    if live:
        names = ", ".join(str(v.get("volume")) for v in live)
        return EXIT_NO_SNAPSHOT, f"the command succeeded, but {names} was read WITHOUT a snapshot (live)"
    return 0, "success"


# ------------------------------------------------------------------ output


def json_text(data: object, indent: int | None = 2) -> str:
    """JSON for people and programs: readable UTF-8, but \\u escapes when a
    path is not valid UTF-8 (a lone surrogate), so the output stays valid
    UTF-8 JSON and json.loads gives back the exact name."""
    try:
        text = json.dumps(data, indent=indent, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=indent, ensure_ascii=True)
    return text


def size_text(n: object) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return "-" if n is None else str(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render_report(data: dict[str, Any]) -> list[str]:
    """The human report: one block, meant for stderr."""
    lines = [f"vspfs backup: {data['result']} (exit {data['exit_code']})"]

    def row(key: str, value: object) -> None:
        lines.append(f"  {key:<13} {value}")

    cmd = data.get("command") or {}
    if cmd.get("argv"):
        ran = cmd.get("exit_code")
        how = "not run" if ran is None and not cmd.get("error") else (cmd.get("error") or f"exit {ran}")
        row("command", f"{shlex.join(cmd['argv'])}  ({how}, {cmd.get('duration_s', 0):.1f} s)")
    q = data.get("quiet_period") or {}
    if q:
        wait = q.get("busy_file_wait")
        if not wait:
            row("quiet period", "not waited for (--busy-file-wait 0)")
        elif q.get("found"):
            row("quiet period", f"{wait:g} s without writes, found after {q.get('waited_s', 0):.1f} s")
        elif q.get("found") is False:
            row(
                "quiet period",
                f"NOT FOUND within {q.get('busy_file_timeout'):g} s (--on-timeout {q.get('on_timeout')})",
            )
    for v in data.get("volumes") or []:
        if v.get("source") == "snapshot":
            state = v.get("state") or "?"
            if v.get("invalid_reason"):
                state += f": {v['invalid_reason']}"
            row("volume", f"{v.get('volume')}: snapshot {v.get('snapshot')} ({state})")
            maximum = v.get("cache_max")
            row(
                "",
                f"cache {size_text(v.get('cache_bytes'))} used at peak of "
                f"{size_text(maximum) if maximum else 'unbounded'}; preserved "
                f"{size_text(v.get('bytes_preserved'))} in {v.get('chunks_preserved', 0)} chunks; "
                f"pinned {size_text(v.get('pinned_bytes'))}",
            )
        elif v.get("source") == "live":
            row("volume", f"{v.get('volume')}: LIVE, no snapshot ({v.get('live_reason')})")
        else:
            row("volume", f"{v.get('volume')}: not backed up")
        opened = v.get("open_for_write") or []
        if opened:
            more = f" and {len(opened) - 5} more" if len(opened) > 5 else ""
            row("", f"open for writing: {', '.join(opened[:5])}{more}")
    for w in data.get("warnings") or []:
        row("warning", w)
    row("duration", f"{data.get('duration_s', 0):.1f} s")
    return lines


class Progress:
    """One status line on a terminal, redrawn in place; silent when not wanted."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._shown = False
        self._last = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        width = shutil.get_terminal_size((100, 20)).columns - 1
        sys.stderr.write("\r\033[K" + text[:width])
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False

    def say(self, text: str) -> None:
        """A line that stays (a warning), above the status line."""
        self.clear()
        click.echo(text, err=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_text(status: dict[str, Any], command: str | None, since: float | None) -> str:
    q = status.get("quiet_period") or {}
    phase = status.get("phase")
    if phase == "quiet":
        left = max(0.0, (q.get("busy_file_timeout") or 0) - (q.get("waited_s") or 0))
        return (
            f"vspfs backup: waiting for {q.get('busy_file_wait'):g} s without writes "
            f"(quiet for {q.get('quiet_for_s', 0):.1f} s; giving up in {left:.0f} s)"
        )
    if phase == "snapshot":
        return "vspfs backup: taking the snapshot set"
    if command is None:
        return f"vspfs backup: {phase}"
    parts = [f"vspfs backup: running {command} {_clock(time.monotonic() - (since or time.monotonic()))}"]
    for v in status.get("volumes") or []:
        if v.get("source") == "snapshot":
            used, maximum = v.get("cache_bytes") or 0, v.get("cache_max")
            pct = f" ({100 * used / maximum:.0f}%)" if maximum else ""
            parts.append(f"cache {v.get('volume')} {size_text(used)}{pct}")
        elif v.get("source") == "live":
            parts.append(f"{v.get('volume')} LIVE")
    return " | ".join(parts)


# ---------------------------------------------------------------------- the job


class _Holder(threading.Thread):
    """Holds the job's connection open: the daemon's answer comes when the job has ended."""

    def __init__(self, args: dict[str, Any], socket_path: str | None) -> None:
        super().__init__(name="vspfs-backup-job", daemon=True)
        self.args = args
        self.socket_path = socket_path
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from vspfs.control import request

        try:
            result = request("job.start", self.args, socket_path=self.socket_path, timeout=None)
            self.report = result if isinstance(result, dict) else None
        except BaseException as exc:
            self.error = exc


class BackupRun:
    """One `vspfs backup` invocation, from start to exit status."""

    def __init__(
        self,
        volumes: list[str],
        argv: list[str],
        options: Options,
        *,
        socket_path: str | None,
        mount_dir: str | None,
        progress: bool,
        typed: list[str] | None = None,
    ) -> None:
        self.volumes = volumes  # as sent to the daemon (paths made absolute)
        self.typed = typed or list(volumes)  # as the user typed them
        self.argv = argv
        self.options = options
        self.socket_path = socket_path
        self.mount_dir = mount_dir
        self.progress = Progress(progress)
        self.job_id = secrets.token_hex(8)
        self.signal: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._warned: set[str] = set()
        self._seen_job = False
        self.started = time.monotonic()

    # -- daemon requests

    def _call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        from vspfs.control import request

        return request(op, args, socket_path=self.socket_path, timeout=timeout)

    def _status(self) -> dict[str, Any] | None:
        """The job's status; None while it is not (or no longer) known to the daemon."""
        try:
            result = self._call("job.status", {"job": self.job_id}, STATUS_TIMEOUT)
        except VspError:
            return None  # not registered yet, already gone, or the daemon is: the holder will tell
        if not isinstance(result, dict):
            return None
        self._seen_job = True
        return self._as_typed(result)

    def _as_typed(self, report: dict[str, Any]) -> dict[str, Any]:
        """The report with each volume named as the user typed it."""
        out = dict(report)
        vols = []
        for v in report.get("volumes") or []:
            name = v.get("volume")
            if name in self.volumes:
                v = {**v, "volume": self.typed[self.volumes.index(name)]}
            vols.append(v)
        out["volumes"] = vols
        return out

    # -- signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = self.signal is None
        if first:
            self.signal = signum
        proc = self.proc
        if proc is not None and proc.poll() is None and signum != signal.SIGINT and not _windows():
            # A terminal's Ctrl-C reaches the command itself (same process group);
            # a SIGTERM or SIGHUP sent to us alone is passed on. On Windows a
            # console's Ctrl-Break reaches the command too, and the stop steps
            # (Ctrl-Break to its group) follow as for Ctrl-C.
            signal_tree(proc, signum)

    # -- the run

    def start_args(self) -> dict[str, Any]:
        o = self.options
        return {
            "job": self.job_id,
            "volumes": self.volumes,
            "busy_file_wait": o.busy_file_wait,
            "busy_file_timeout": o.busy_file_timeout,
            "on_timeout": o.on_timeout,
            "on_error": o.on_error,
            "cache_size": o.cache_size,
            "max_cache_size": o.max_cache_size,
            "policy": o.policy,
            "cache_volumes": o.cache_volumes,
            "exclude_volumes": o.exclude_volumes,
            "volume_options": o.volume_options,
            "mount_dir": self.mount_dir,
        }

    def run(self) -> dict[str, Any]:
        """Run the job; the final report (with "exit_code" and "result")."""
        previous = {s: signal.signal(s, self._on_signal) for s in _interrupt_signals()}
        try:
            return self._run()
        finally:
            self.progress.clear()
            for s, h in previous.items():
                with contextlib.suppress(Exception):
                    signal.signal(s, h)

    def _run(self) -> dict[str, Any]:
        holder = _Holder(self.start_args(), self.socket_path)
        holder.start()
        status = self._wait_ready(holder)
        command: CommandResult | None = None
        lost: str | None = None
        if status is not None and self.signal is None:
            command, lost = self._run_command(holder, status)
        report = self._finish(holder)
        if report is None:
            lost = lost or _why(holder.error)
            report = status or {}
        elif lost is None and report.get("ended_by") in ("daemon-stopping", "failed", "client-gone"):
            lost = _LOST.get(report["ended_by"], report["ended_by"])
        return self._final(report, command, lost)

    def _wait_ready(self, holder: _Holder) -> dict[str, Any] | None:
        """Follow the quiet period and snapshot; the job's status once ready, None if it ended."""
        while True:
            if not holder.is_alive():
                if isinstance(holder.error, VspError) and holder.report is None and not self._seen_job:
                    raise holder.error  # refused at once (unknown volume, no daemon ...)
                return None
            if self.signal is not None:
                return None
            status = self._status()
            if status is not None:
                self._show_warnings(status)
                if status.get("phase") == "ready":
                    return status
                if status.get("phase") in ("ending", "ended"):
                    return None
                self.progress.show(progress_text(status, None, None))
            time.sleep(POLL / 2)

    def _run_command(self, holder: _Holder, status: dict[str, Any]) -> tuple[CommandResult, str | None]:
        drives: dict[str, str] = {}
        for v in status.get("volumes") or []:
            drives[v["volume"]] = v.get("drive") or v.get("live_view")  # named as typed
        result = CommandResult(argv=list(self.argv))
        try:
            argv = substitute(self.argv, drives)
        except UsageError as exc:
            result.error = str(exc)
            return result, None
        result.argv = argv
        env = {**os.environ, "VSPFS_DRIVES": json.dumps(drives), "VSPFS_JOB": self.job_id}
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(argv, env=env, creationflags=_creation_flags())
        except OSError as exc:
            result.error = f"{argv[0]}: {exc.strerror or exc}"
            return result, None
        lost: str | None = None
        invalid_seen = False
        stop_at: list[tuple[float, str]] = []  # (when, step of STOP_STEPS) still to take
        name = os.path.basename(argv[0])
        next_poll = 0.0
        while True:
            try:
                rc = self.proc.wait(timeout=POLL / 2)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.signal is not None and not stop_at:
                stop_at = list(zip([now + d for d in _cumulative(STOP_GRACE)], STOP_STEPS, strict=True))
            if stop_at:
                self._escalate(stop_at, now)
                continue
            if not holder.is_alive() and lost is None:
                lost = _why(holder.error) if holder.report is None else "the daemon ended the job"
                self.progress.say(f"vspfs backup: error: {lost}: stopping the command")
                stop_at = [(now, TERMINATE), (now + STOP_GRACE[2], KILL)]
                continue
            if now >= next_poll:
                next_poll = now + POLL
                current = self._status()
                if current is not None:
                    status = current
                    self._show_warnings(status)
                    bad = [v for v in status.get("volumes") or [] if v.get("state") == "invalid"]
                    if bad and not invalid_seen:
                        invalid_seen = True
                        v = bad[0]
                        self.progress.say(
                            f"vspfs backup: error: the snapshot of {v['volume']} became invalid "
                            f"({v.get('invalid_reason')}): stopping the command"
                        )
                        stop_at = [(now, TERMINATE), (now + STOP_GRACE[2], KILL)]
                        continue
                self.progress.show(progress_text(status, name, t0))
        result.returncode = rc
        result.duration_s = time.monotonic() - t0
        self.proc = None
        return result, lost

    def _escalate(self, stop_at: list[tuple[float, str]], now: float) -> None:
        """Stop the command: take each step of ``stop_at`` once its time has come."""
        proc = self.proc
        while proc is not None and stop_at and now >= stop_at[0][0]:
            _when, step = stop_at.pop(0)
            stop_command(proc, step)

    def _finish(self, holder: _Holder) -> dict[str, Any] | None:
        """End the job (if it still runs) and return its final report."""
        reason = "interrupted" if self.signal is not None else "finished"
        report: dict[str, Any] | None = None
        if holder.is_alive():
            try:
                result = self._call("job.finish", {"job": self.job_id, "reason": reason}, FINISH_TIMEOUT)
                report = result if isinstance(result, dict) else None
            except VspError:
                report = None
            holder.join(FINISH_TIMEOUT if report is None else 10.0)
        report = report or holder.report
        return None if report is None else self._as_typed(report)

    def _show_warnings(self, status: dict[str, Any]) -> None:
        for w in status.get("warnings") or []:
            if w not in self._warned:
                self._warned.add(w)
                self.progress.say(f"vspfs backup: warning: {w}")

    def _final(
        self, report: dict[str, Any], command: CommandResult | None, lost: str | None
    ) -> dict[str, Any]:
        self._show_warnings(report)
        code, verdict = outcome(report, command, interrupted=self.signal, lost=lost)
        out = dict(report)
        out.pop("phase", None)
        out.pop("elapsed_s", None)
        out["exit_code"] = code
        out["result"] = verdict
        out["command"] = {
            "argv": command.argv if command else list(self.argv),
            "exit_code": command.exit_code if command else None,
            "error": command.error if command else None,
            "duration_s": round(command.duration_s, 3) if command else 0.0,
        }
        out["duration_s"] = round(time.monotonic() - self.started, 3)
        return out


_LOST = {
    "daemon-stopping": "the daemon is shutting down",
    "failed": "the job failed in the daemon (see its log)",
    "client-gone": "the daemon lost this client's connection",
}


def _windows() -> bool:
    return winplatform.running_on_windows()


def _creation_flags() -> int:
    """Windows: the command leads a process group of its own (CREATE_NEW_PROCESS_GROUP),
    so that Ctrl-Break can be sent to it and whatever it started (see :func:`stop_command`).
    A console's Ctrl-C then no longer reaches the command (Windows disables it in a new
    group): the Ctrl-C reaches us, and stopping follows. 0 elsewhere."""
    return getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) if _windows() else 0


def stop_command(proc: subprocess.Popen[bytes], step: str) -> None:
    """Take one step of stopping the command and everything it started (STOP_STEPS).

    POSIX: SIGINT, SIGTERM, SIGKILL to the tree (:func:`signal_tree`).
    Windows has neither signals to send nor /proc to find the tree: the
    gentle steps send Ctrl-Break to the command's process group (console
    programs exit on it by default, and each process the command started
    belongs to the group unless it made its own); the last one ends the
    whole tree with ``taskkill /F /T`` (TerminateProcess on each process,
    found by parent id), or, if that fails, TerminateProcess on the command.
    """
    if not _windows():
        sig = signal.SIGINT if step == INTERRUPT else signal.SIGTERM if step == TERMINATE else signal.SIGKILL
        signal_tree(proc, sig)
        return
    if step != KILL:
        with contextlib.suppress(OSError):  # no console shared with it: the last step will do
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]  # GenerateConsoleCtrlEvent
        return
    try:
        done = subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, timeout=30, check=False
        )
        if done.returncode == 0:
            return
    except (OSError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(OSError):
        proc.kill()


def signal_tree(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the command and every process it started.

    A shell (``sh -c "tar ... | gzip"``) does not pass SIGTERM on to its
    children, which would go on reading drives that are about to disappear.
    The command stays in our process group so that a terminal's Ctrl-C and
    its prompts (restic's password) keep working; the tree is found instead.
    POSIX only (Windows: :func:`stop_command`).
    """
    below = procs.descendants(proc.pid)
    with contextlib.suppress(OSError):
        proc.send_signal(sig)
    for pid in below:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _cumulative(delays: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for d in delays:
        total += d
        out.append(total)
    return out


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "the daemon closed the job's connection"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------- click


@dataclass
class _Globals:
    socket: str | None = None
    config: str | None = None
    timeout: float = 120.0


def _group_settings(ctx: click.Context) -> _Globals:
    """The `vspfs` group's options (--socket, --config, --timeout).

    Read from the root context's object by attribute, not through vspfs.cli:
    under ``python -m vspfs.cli`` that module runs as ``__main__``, and
    importing it again would make a second, unconfigured copy.
    """
    obj = ctx.find_root().obj
    return _Globals(
        socket=getattr(obj, "socket", None),
        config=getattr(obj, "config", None),
        timeout=getattr(obj, "timeout", 120.0),
    )


def _volume_arg(name: str) -> str:
    """A VOLUME as sent to the daemon: a path made absolute, a bare name or id as is.

    A drive letter (a live view on Windows) goes as "L:": made absolute it
    would become the current directory of that drive (as in vspfs/cli.py).
    """
    if winplatform.looks_like_drive_letter(name):
        return winplatform.parse_drive_letter(name)
    if "/" in name or os.path.exists(name) or name in (".", ".."):
        return os.path.abspath(os.path.expanduser(name))
    return name


class _BackupCommand(click.Command):
    """Everything after ``--`` is the backup command, kept apart from VOLUME arguments."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["vspfs.command"] = args[i + 1 :]
            args = args[:i]
        else:
            ctx.meta["vspfs.command"] = []
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "-- COMMAND [ARGS]..."]


_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("backup", cls=_BackupCommand, context_settings=_CONTEXT)
@click.argument("volumes", nargs=-1, required=True, metavar="VOLUME...")
@click.option(
    "--busy-file-wait",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Quiet period: seconds without any write on the job's volumes before the snapshot set "
    "(fractions allowed; 0 = at once) [default 5].",
)
@click.option(
    "--busy-file-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Longest wait for the quiet period [default 300].",
)
@click.option(
    "--on-timeout",
    type=click.Choice(["continue", "abort"]),
    help="No quiet period in time: back up from the live volumes (continue, default) or abort.",
)
@click.option(
    "--on-error",
    type=click.Choice(["continue", "abort"]),
    help="Snapshot failed: back up from the live volumes (continue, default) or abort.",
)
@click.option(
    "--cache-size",
    multiple=True,
    metavar="[VOLUME=]SIZE",
    help="Initial cache file size, for every volume or one (repeatable) [default 16M].",
)
@click.option(
    "--max-cache-size",
    multiple=True,
    metavar="[VOLUME=]SIZE",
    help="Cache file maximum, or none, for every volume or one (repeatable) [default 20%].",
)
@click.option(
    "--policy",
    type=click.Choice(["invalidate", "refuse-writes"]),
    help="When a cache is full: invalidate the snapshot (default) or refuse live writes.",
)
@click.option(
    "--cache-volume",
    "cache_volumes",
    multiple=True,
    metavar="DIR",
    help="Where this job's cache files may go (repeatable): its Cache File Volume List.",
)
@click.option(
    "--exclude-volume",
    "exclude_volumes",
    multiple=True,
    metavar="DIR",
    help="Never snapshot this volume in this job: read it live (repeatable).",
)
@click.option(
    "--mount-dir",
    metavar="DIR",
    help="Mount the virtual drives under DIR/<volume name> [default: a new private directory].",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a live status line on stderr [default: when stderr is a terminal].",
)
@click.option("--report-file", metavar="FILE", help="Also write the JSON report to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
def backup_cmd(
    ctx: click.Context,
    volumes: tuple[str, ...],
    busy_file_wait: float | None,
    busy_file_timeout: float | None,
    on_timeout: str | None,
    on_error: str | None,
    cache_size: tuple[str, ...],
    max_cache_size: tuple[str, ...],
    policy: str | None,
    cache_volumes: tuple[str, ...],
    exclude_volumes: tuple[str, ...],
    mount_dir: str | None,
    progress: bool | None,
    report_file: str | None,
    as_json: bool,
) -> int:
    """Back up VOLUMEs from a snapshot set: quiet period, snapshots, COMMAND, cleanup.

    Waits until none of the volumes has had a write for --busy-file-wait
    seconds, takes one snapshot set, mounts a read-only virtual drive per
    volume and runs COMMAND with {drive} (one volume) or {drive:VOLUME}
    replaced by the drive's path ({path} and {path:VOLUME} are synonyms;
    VSPFS_DRIVES holds them all as JSON). The
    snapshots are destroyed and their cache files removed whatever happens.
    The report goes to stderr (--json: stdout). Exit status: COMMAND's own
    on success, else 10-15 or 128+signal (docs/backup.md).

    \b
    Example:
      vspfs backup /srv/data --busy-file-wait 1 -- tar -C {drive} -cf /backup/data.tar .
    """
    argv = list(ctx.meta.get("vspfs.command") or [])
    names = list(volumes)
    check_command(argv, names)
    settings = _group_settings(ctx)
    config = config_mod.load(settings.config)
    options = resolve_options(
        {
            "busy_file_wait": busy_file_wait,
            "busy_file_timeout": busy_file_timeout,
            "on_timeout": on_timeout,
            "on_error": on_error,
            "cache_size": cache_size,
            "max_cache_size": max_cache_size,
            "policy": policy,
            "cache_volumes": cache_volumes,
            "exclude_volumes": exclude_volumes,
        },
        config,
    )
    if report_file is not None:
        report_file = os.path.abspath(report_file)
    wire_names = [_volume_arg(v) for v in names]  # the daemon does not share our cwd
    run = BackupRun(
        wire_names,
        argv,
        options,
        socket_path=settings.socket,
        mount_dir=os.path.abspath(mount_dir) if mount_dir else None,
        progress=sys.stderr.isatty() if progress is None else progress,
        typed=names,
    )
    report = run.run()
    if report_file is not None:
        try:
            with open(report_file, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2, ensure_ascii=False)
                f.write("\n")
        except OSError as exc:
            click.echo(f"vspfs: error: cannot write the report to {report_file}: {exc.strerror}", err=True)
    if as_json:
        click.echo(json_text(report))
    else:
        for line in render_report(report):
            click.echo(line, err=True)
    return int(report["exit_code"])


# -------------------------------------------------------------------- changes


@click.command("changes", context_settings=_CONTEXT)
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def changes_cmd(snapshot_id: str, as_json: bool) -> None:
    """List the paths changed on the live volume since SNAPSHOT.

    Created, modified, deleted and renamed paths, relative to the volume,
    from what the daemon tracks for the snapshot (no timestamps involved):
    the list an incremental backup needs. Human output is one line per path:
    A (created), M (modified), D (deleted), R OLD -> NEW (renamed).
    """
    from vspfs.control import request

    settings = _group_settings(click.get_current_context())
    args: dict[str, Any] = {"snapshot": snapshot_id}
    out: dict[str, Any] = {
        "snapshot": snapshot_id,
        "created": [],
        "modified": [],
        "deleted": [],
        "renamed": [],
    }
    while True:
        page = request("changes", args, socket_path=settings.socket, timeout=settings.timeout)
        for item in page.get("items") or []:
            if item[0] == "renamed":
                out["renamed"].append({"from": item[1], "to": item[2]})
            elif item[0] in out:
                out[item[0]].append(item[1])
        if page.get("next") is None:
            break
        args = {"snapshot": snapshot_id, "token": page["token"], "offset": page["next"]}
    if as_json:
        click.echo(json_text(out))
        return
    for kind, letter in (("created", "A"), ("modified", "M"), ("deleted", "D")):
        for path in out[kind]:
            click.echo(f"{letter} {path}")
    for r in out["renamed"]:
        click.echo(f"R {r['from']} -> {r['to']}")
