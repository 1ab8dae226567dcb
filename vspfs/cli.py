"""The ``vspfs`` command line.

Every command but ``serve`` (and ``cleanup`` when no daemon runs) is a thin
client: it turns its arguments into one control-channel request, sends it to
the daemon that owns all snapshot state, and prints the reply for a human or,
with ``--json``, for a machine. Paths are made absolute here because the
daemon's working directory is not the user's.

Errors are one line on stderr, ``vspfs: error: <message>``, and a documented
exit code (docs/cli.md); never a traceback unless asked for with ``-v`` or
``VSPFS_DEBUG=1``, because a traceback tells a user nothing they can act on.
:func:`main` is the only place that maps exceptions to exit codes.

Adding a command: write it in its own module as a click command (as
``vspfs backup`` and ``vspfs changes`` are, in vspfs/backup.py), add it here
with ``cli.add_command``, and reuse :func:`call_daemon`, :func:`emit` and the
exit codes below (10-19 are `vspfs backup` outcomes). On the daemon side, a
new request is one more entry in ``Daemon._ops``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import click

from vspfs import __version__, winplatform
from vspfs.backup import json_text, size_text
from vspfs.errors import DaemonNotRunning, UsageError, VspError

# Exit codes (docs/cli.md). Domain errors carry their own ``exit_code``; these
# name the ones the CLI decides itself.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_RULE = 4
EXIT_CACHE_FILE = 5
EXIT_SNAPSHOT_INVALID = 6
EXIT_READ_ONLY = 7
EXIT_MOUNT = 8
#: 10-19: reserved for `vspfs backup` outcomes (issue 5)
EXIT_BACKUP_FIRST = 10
EXIT_BACKUP_LAST = 19
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

#: seconds a command waits for the daemon's answer (mounting can take a while)
DEFAULT_TIMEOUT = 120.0

#: click >= 8.2 raises this for a bare `vspfs` (it carries the help text); older click exits 0
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Seconds(click.FloatRange):
    """A finite number of seconds: click's FloatRange lets "1e400" through
    as infinity, which the control channel's JSON cannot carry."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


_debug = False


def _debug_wanted() -> bool:
    return _debug or os.environ.get("VSPFS_DEBUG", "") not in ("", "0")


# ------------------------------------------------------------------ helpers


class Settings:
    """Options of the ``vspfs`` group that every command may need."""

    def __init__(
        self, socket: str | None, state_dir: str | None, timeout: float, config: str | None = None
    ) -> None:
        self.socket = socket
        self.state_dir = state_dir
        self.timeout = timeout
        self.config = config  # --config FILE (None: $VSPFS_CONFIG or the usual locations)


def load_config() -> Any:
    """The configuration file(s) for this command (vspfs/config.py); errors name the key."""
    from vspfs import config

    return config.load(_settings().config)


def _settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings(None, None, DEFAULT_TIMEOUT)


#: ``call_daemon(timeout=...)`` default: use the global --timeout
USE_DEFAULT_TIMEOUT = -1.0


def call_daemon(
    op: str, args: dict[str, Any] | None = None, *, timeout: float | None = USE_DEFAULT_TIMEOUT
) -> Any:
    """Send one request to the daemon; its errors propagate as VspError subclasses.

    ``timeout=None`` waits as long as the daemon works (a backup job); the
    default is the global ``--timeout``.
    """
    from vspfs.control import request

    s = _settings()
    wait = s.timeout if timeout == USE_DEFAULT_TIMEOUT else timeout
    return request(op, args or {}, socket_path=s.socket, timeout=wait)


def emit(data: object, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print a result: JSON for machines, or the command's human rendering."""
    if as_json:
        click.echo(json_text(data))
    else:
        human(data)


def _abs(path: str) -> str:
    """An absolute path as the daemon must see it (it does not share our cwd)."""
    return os.path.abspath(os.path.expanduser(path))


def _channel(path: str) -> str:
    """A control channel as the daemon must see it: socket paths absolute, pipe names as given."""
    return path if winplatform.is_pipe_name(path) else _abs(path)


def _mount_target(target: str | None) -> str | None:
    """A mount target as sent to the daemon: "V:" for a drive letter, else an absolute directory.

    Checked here, before ``_abs``, because ``V:`` made absolute on Linux is a
    directory named "V:" in the current directory, which nobody means: on
    every platform but Windows a drive letter (or no target at all, which
    means "the first free letter") is a one-line usage error.
    """
    if target is None or winplatform.looks_like_drive_letter(target):
        if not winplatform.running_on_windows():
            if target is None:
                raise click.UsageError(
                    "Missing argument 'DIR': give a directory to mount on (picking a free drive "
                    "letter works only on Windows)",
                    ctx=click.get_current_context(silent=True),
                )
            raise winplatform.drive_letters_unsupported(target)
        return None if target is None else winplatform.parse_drive_letter(target)
    return _abs(target)


def _volume_arg(name: str) -> str:
    """A VOLUME as sent to the daemon: a path made absolute, or a bare name/id as is.

    A drive letter (a live view on Windows) goes as "L:": made absolute it
    would become the current directory of that drive.
    """
    if winplatform.looks_like_drive_letter(name):
        return winplatform.parse_drive_letter(name)
    if "/" in name or os.path.exists(name) or name in (".", ".."):
        return _abs(name)
    return name


def _size(n: object) -> str:
    """Human size in binary units (exact bytes stay in --json)."""
    return size_text(n)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print aligned columns; the last column is not padded."""
    text_rows = [[("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *text_rows]:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        click.echo("  ".join(cells).rstrip())


def _volume_text(vol: object) -> str:
    if isinstance(vol, dict):
        backing, mp = vol.get("backing"), vol.get("mountpoint")
        if mp and mp != backing:
            return f"{backing} (live view {mp})"
        return str(backing)
    return str(vol)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


# --------------------------------------------------------------------- group


@click.group(context_settings=_CONTEXT)
@click.option(
    "--socket",
    "socket_path",
    envvar="VSPFS_SOCKET",
    metavar="PATH",
    help="Control socket of the daemon [env VSPFS_SOCKET; default: per-user runtime dir, "
    "/run/vspfs for root].",
)
@click.option(
    "--state-dir",
    envvar="VSPFS_STATE_DIR",
    metavar="DIR",
    help="Daemon state directory [env VSPFS_STATE_DIR; default /var/lib/vspfs for root, "
    "else ~/.local/state/vspfs].",
)
@click.option(
    "--timeout",
    type=Seconds(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long a command waits for the daemon's answer.",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="Configuration file to read instead of /etc/vspfs/config.toml and "
    "~/.config/vspfs/config.toml [env VSPFS_CONFIG; empty: none].",
)
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(__version__, "--version", prog_name="vspfs")
@click.pass_context
def cli(
    ctx: click.Context,
    socket_path: str | None,
    state_dir: str | None,
    timeout: float,
    config_file: str | None,
    verbose: bool,
) -> None:
    """vspfs: point-in-time, copy-on-write snapshots of live volumes, shown as read-only drives.

    Start the daemon with `vspfs serve`, then take snapshots, mount and destroy
    them with the other commands. Every command takes --json. Exit codes are
    listed in docs/cli.md.
    """
    global _debug
    _debug = _debug or verbose
    ctx.obj = Settings(socket_path, state_dir, timeout, _abs(config_file) if config_file else None)


# --------------------------------------------------------------------- serve


class _JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, for `serve --json`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json_text(entry, indent=None)


def setup_logging(verbose: bool, log_file: str | None, as_json: bool) -> None:
    """Log one line per event to stderr (and to ``log_file``); debug with -v."""
    if as_json:
        formatter: logging.Formatter = _JsonLogFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot open log file {log_file}: {exc.strerror or exc}") from None
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # mfusepy logs every callback it wires (and more) at debug: one line per event is ours to keep
    logging.getLogger("fuse").setLevel(logging.INFO)


@cli.command(context_settings=_CONTEXT)
@click.argument("volumes", nargs=-1, required=True, metavar="VOLUME...")
@click.option(
    "--cache-volume",
    "cache_volumes",
    multiple=True,
    metavar="DIR",
    help="A directory whose root may hold cache files (repeatable): the Cache File Volume List "
    "[config: cache_volumes].",
)
@click.option(
    "--exclude-volume",
    "exclude_volumes",
    multiple=True,
    metavar="DIR",
    help="A volume (or tree) that is never snapshotted (repeatable): the VSP Volume Exclude List "
    "[config: exclude_volumes].",
)
@click.option(
    "--socket", "socket_path", metavar="PATH", help="Control socket (overrides the global --socket)."
)
@click.option("--over", is_flag=True, help="Mount the live view over BACKING itself (the default).")
@click.option(
    "--at",
    "at",
    metavar="MOUNTPOINT",
    help="Mount the live view of the one BACKING at MOUNTPOINT (the same as BACKING=MOUNTPOINT).",
)
@click.option("--allow-other", is_flag=True, help="Let other users use the mounts (FUSE allow_other).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@click.option("--log-file", metavar="FILE", help="Also append the log to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line.")
def serve(
    volumes: tuple[str, ...],
    cache_volumes: tuple[str, ...],
    exclude_volumes: tuple[str, ...],
    socket_path: str | None,
    over: bool,
    at: str | None,
    allow_other: bool,
    verbose: bool,
    log_file: str | None,
    as_json: bool,
) -> int:
    """Run the daemon in the foreground: serve each VOLUME through a live view.

    VOLUME is BACKING (the live view is mounted over the backing directory
    itself, so applications keep their paths; --over says so explicitly) or
    BACKING=MOUNTPOINT (for one volume also BACKING --at MOUNTPOINT).
    Applications must write through the live view for snapshots to see their
    changes. SIGINT or SIGTERM destroys every snapshot, unmounts everything and
    removes the cache files.
    """
    from vspfs.daemon import VolumeSpec
    from vspfs.daemon import serve as run

    global _debug
    _debug = _debug or verbose
    specs = [VolumeSpec.parse(v) for v in volumes]
    if over and at is not None:
        raise UsageError("--over and --at exclude each other: give one")
    if at is not None:
        if len(specs) != 1 or specs[0].mountpoint is not None:
            raise UsageError("--at MOUNTPOINT takes one BACKING; for several, give BACKING=MOUNTPOINT")
        backing = specs[0].backing
        # the spec parser splits at the first "=": a backing path holding one is kept whole
        whole = "=" in backing
        specs = [VolumeSpec(backing, os.path.abspath(at)) if whole else VolumeSpec.parse(f"{backing}={at}")]
    if over and any(not spec.over for spec in specs):
        raise UsageError("--over mounts each live view over its backing directory: drop =MOUNTPOINT")
    config = load_config()
    setup_logging(_debug, log_file, as_json)
    s = _settings()
    caches = [_abs(c) for c in cache_volumes] or list(config.get(None, "cache_volumes"))
    excludes = [_abs(e) for e in exclude_volumes] or list(config.get(None, "exclude_volumes"))
    return run(
        specs,
        cache_volumes=caches,
        exclude_volumes=excludes,
        socket_path=_channel(socket_path) if socket_path else (_channel(s.socket) if s.socket else None),
        allow_other=allow_other,
        state_dir=_abs(s.state_dir) if s.state_dir else None,
    )


# ------------------------------------------------------------------ snapshot


@cli.group(context_settings=_CONTEXT)
def snapshot() -> None:
    """Create snapshots."""


@snapshot.command("create", context_settings=_CONTEXT)
@click.argument("volumes", nargs=-1, required=True, metavar="VOLUME...")
@click.option(
    "--mount",
    "mount_dir",
    metavar="V:|DIR",
    help="Mount the snapshot read-only at DIR (with several volumes, at DIR/<volume name>), "
    "or on drive letter V: (Windows, one volume).",
)
@click.option(
    "--cache-size",
    multiple=True,
    metavar="[VOLUME=]SIZE",
    help="Initial cache file size (e.g. 64M, 1G, 5%), for every volume or one (repeatable) [default 16M].",
)
@click.option(
    "--max-cache-size",
    multiple=True,
    metavar="[VOLUME=]SIZE",
    help="Cache file maximum (e.g. 10G, 20%, or none for unbounded), for every volume or one "
    "(repeatable) [default 20%].",
)
@click.option(
    "--policy",
    type=click.Choice(["invalidate", "refuse-writes"]),
    help="When the cache is full: invalidate the snapshot (default) or refuse live writes.",
)
@click.option(
    "--busy-file-wait",
    type=Seconds(min=0),
    default=0.0,
    metavar="SECONDS",
    help="First wait until the volumes have had no write for SECONDS [default 0: at once].",
)
@click.option(
    "--busy-file-timeout",
    type=Seconds(min=0),
    metavar="SECONDS",
    help="Longest wait for that quiet period; then exit 12 [default 300, config backup.busy_file_timeout].",
)
@json_option
def snapshot_create(
    volumes: tuple[str, ...],
    mount_dir: str | None,
    cache_size: tuple[str, ...],
    max_cache_size: tuple[str, ...],
    policy: str | None,
    busy_file_wait: float,
    busy_file_timeout: float | None,
    as_json: bool,
) -> None:
    """Snapshot each VOLUME (several at once form one atomic set).

    A VOLUME is named by its backing path, its live-view path, its name or its id.
    """
    from vspfs.backup import resolve_sizes

    config = load_config()
    initial, maximum, per_volume = resolve_sizes(
        {"cache_size": cache_size, "max_cache_size": max_cache_size}, config
    )
    args: dict[str, Any] = {
        "volumes": [_volume_arg(v) for v in volumes],
        "mount": _mount_target(mount_dir) if mount_dir else None,
        "policy": policy or config.get("snapshot", "policy"),
        "cache_size": initial,
        "max_cache_size": maximum,
        "volume_options": per_volume,
        "busy_file_wait": busy_file_wait,
        "busy_file_timeout": (
            busy_file_timeout if busy_file_timeout is not None else config.get("backup", "busy_file_timeout")
        ),
    }
    wait = _settings().timeout + (args["busy_file_timeout"] if busy_file_wait > 0 else 0)
    result = call_daemon("snapshot.create", args, timeout=wait)

    def human(data: dict[str, Any]) -> None:
        for snap in data.get("snapshots", []):
            where = f", mounted at {snap['mount']}" if snap.get("mount") else ""
            click.echo(f"created snapshot {snap.get('id')} of {_volume_text(snap.get('volume'))}{where}")

    emit(result, as_json, human)


# ------------------------------------------------------------- mount/unmount


@cli.command("mount", context_settings=_CONTEXT)
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.argument("directory", metavar="[V:|DIR]", required=False)
@json_option
def mount_cmd(snapshot_id: str, directory: str | None, as_json: bool) -> None:
    """Mount SNAPSHOT read-only at DIR (an empty directory; made if missing).

    On Windows, on drive letter V: instead; with neither, on the first free
    letter from V: down. Drive letters exist only on Windows.
    """
    result = call_daemon("mount", {"snapshot": snapshot_id, "dir": _mount_target(directory)})
    emit(result, as_json, lambda d: click.echo(f"mounted snapshot {d.get('snapshot')} at {d.get('mount')}"))


@cli.command("unmount", context_settings=_CONTEXT)
@click.argument("directory", metavar="V:|DIR")
@json_option
def unmount_cmd(directory: str, as_json: bool) -> None:
    """Unmount the virtual drive at DIR or on drive letter V: (the snapshot itself stays)."""
    result = call_daemon("unmount", {"dir": _mount_target(directory)})
    emit(
        result,
        as_json,
        lambda d: click.echo(f"unmounted {d.get('unmounted')} (snapshot {d.get('snapshot')})"),
    )


# --------------------------------------------------------------- list/status


def _print_volumes(volumes: list[dict[str, Any]]) -> None:
    _table(
        ["VOLUME", "LIVE VIEW", "SNAPSHOTS"],
        [[v.get("backing"), v.get("mountpoint"), len(v.get("snapshots") or [])] for v in volumes],
    )


@cli.command("list", context_settings=_CONTEXT)
@json_option
def list_cmd(as_json: bool) -> None:
    """List the served volumes and their snapshots."""
    result = call_daemon("list")

    def human(data: dict[str, Any]) -> None:
        _print_volumes(data.get("volumes", []))
        snaps = data.get("snapshots", [])
        click.echo("")
        if not snaps:
            click.echo("no snapshots")
            return
        _table(
            ["SNAPSHOT", "STATE", "VOLUME", "CREATED", "MOUNTS"],
            [
                [
                    s.get("id"),
                    s.get("state"),
                    (s.get("volume") or {}).get("mountpoint") or (s.get("volume") or {}).get("backing"),
                    s.get("created"),
                    ", ".join(s.get("mounts") or []),
                ]
                for s in snaps
            ],
        )

    emit(result, as_json, human)


def _print_snapshot(s: dict[str, Any]) -> None:
    """Key: value lines for one snapshot's status."""
    state = s.get("state")
    if s.get("invalid_reason"):
        state = f"{state}: {s['invalid_reason']}"
    maximum = s.get("cache_max")
    cache = f"{_size(s.get('cache_bytes'))} used of {_size(maximum) if maximum else 'unbounded'}"
    if s.get("cache_allocated") is not None:
        cache += f" (file {_size(s.get('cache_allocated'))})"
    chunks = f"{s.get('chunks_preserved', 0)}"
    if s.get("bytes_preserved") is not None:
        chunks += f" ({_size(s.get('bytes_preserved'))})"
    lines = [
        ("snapshot", s.get("id")),
        ("state", state),
        ("volume", _volume_text(s.get("volume"))),
        ("created", s.get("created")),
        ("cache file", s.get("cache_file")),
        ("cache", cache),
        ("pinned", _size(s.get("pinned_bytes"))),
        ("chunks preserved", chunks),
        ("mounts", ", ".join(s.get("mounts") or []) or "none"),
    ]
    for path in s.get("open_for_write") or []:
        lines.append(("open for write", path))
    for warning in s.get("warnings") or []:
        lines.append(("warning", warning))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


@cli.command("status", context_settings=_CONTEXT)
@click.argument("snapshot_id", metavar="[SNAPSHOT]", required=False)
@json_option
def status_cmd(snapshot_id: str | None, as_json: bool) -> None:
    """Show one snapshot in detail, or the daemon, its volumes and every snapshot."""
    result = call_daemon("status", {"snapshot": snapshot_id} if snapshot_id else {})

    def human(data: dict[str, Any]) -> None:
        if snapshot_id:
            _print_snapshot(data)
            return
        d = data.get("daemon") or {}
        click.echo(f"daemon pid {d.get('pid')}, socket {d.get('socket')}, state dir {d.get('state_dir')}")
        cvs = d.get("cache_volumes") or []
        click.echo(f"cache volumes: {', '.join(cvs) if cvs else 'automatic'}")
        click.echo("")
        _print_volumes(data.get("volumes", []))
        for snap in data.get("snapshots", []):
            click.echo("")
            _print_snapshot(snap)

    emit(result, as_json, human)


# ------------------------------------------------------------------- destroy


@cli.command("destroy", context_settings=_CONTEXT)
@click.argument("snapshot_ids", nargs=-1, required=True, metavar="SNAPSHOT...")
@json_option
def destroy_cmd(snapshot_ids: tuple[str, ...], as_json: bool) -> None:
    """Destroy snapshots: unmount their drives, remove their cache files."""
    result = call_daemon("destroy", {"snapshots": list(snapshot_ids)})
    emit(result, as_json, lambda d: [click.echo(f"destroyed snapshot {i}") for i in d.get("destroyed", [])])


# ------------------------------------------------------------------- cleanup


def local_cleanup(paths: list[str], state_dir: str | None) -> dict[str, Any]:
    """Remove stale leftovers without a daemon (after one died): cache files, retained areas.

    With no paths: the state directory and every directory that a daemon
    recorded serving there (its volumes and cache volumes), after detaching
    any of its mounts that outlived it. Only files that no live daemon holds
    are removed: the core checks each one's lock.
    """
    from vspfs.daemon import (
        default_state_dir,
        detach_dead_mount,
        is_dead_mount,
        read_records,
        record_dirs,
        record_mounts,
    )
    from vspfs.provider import CleanupReport, cleanup_directory

    state = _abs(state_dir or default_state_dir())
    report = CleanupReport()
    unmounted: list[str] = []
    targets: dict[str, None] = {}
    records = [] if paths else read_records(state)
    if paths:
        for p in paths:
            if is_dead_mount(p):
                if detach_dead_mount(p):
                    unmounted.append(p)
                else:
                    raise UsageError(
                        f"{p} is a dead FUSE mount (its daemon died): unmount it with "
                        f"`fusermount3 -u -z {p}`, then run cleanup again"
                    )
            if not os.path.isdir(p):
                raise UsageError(f"{p} is not a directory: name a volume or cache volume to clean")
            targets[os.path.realpath(p)] = None
    else:
        if os.path.isdir(state):
            targets[os.path.realpath(state)] = None
        for rec in records:
            for mp in record_mounts(rec):
                if detach_dead_mount(mp):
                    unmounted.append(mp)
            for d in record_dirs(rec):
                if os.path.isdir(d):
                    targets[os.path.realpath(d)] = None
    for directory in targets:
        cleanup_directory(directory, directory, report)
    if not report.kept:
        for rec in records:  # their leftovers are gone; the record has no more use
            if _record_daemon_gone(rec):
                with contextlib.suppress(OSError):
                    os.unlink(rec["_path"])
    return {"removed": report.removed, "kept": report.kept, "unmounted": unmounted, "daemon": False}


def _record_daemon_gone(record: dict[str, Any]) -> bool:
    """True if the daemon that wrote ``record`` no longer answers on its socket."""
    from vspfs.control import request

    sock = record.get("socket")
    if not isinstance(sock, str):
        return True
    try:
        request("ping", socket_path=sock, timeout=2.0)
    except DaemonNotRunning:
        return True
    except VspError:
        return False
    return False


@cli.command("cleanup", context_settings=_CONTEXT)
@click.argument("volumes", nargs=-1, metavar="[VOLUME...]")
@json_option
def cleanup_cmd(volumes: tuple[str, ...], as_json: bool) -> None:
    """Remove stale cache files and retained areas left by a daemon that died.

    Asks the running daemon if there is one; otherwise cleans up directly:
    each VOLUME (or directory), or with none the state directory and what the
    last daemon recorded serving. Files a live daemon holds are never removed.
    """
    names = [_volume_arg(v) for v in volumes]
    try:
        result = call_daemon("cleanup", {"volumes": names} if names else {})
    except DaemonNotRunning:
        for name in names:
            if not os.path.isabs(name):
                raise UsageError(
                    f"{name} is not a path: with no daemon running, name volumes by their directory"
                ) from None
        result = local_cleanup(names, _settings().state_dir)

    def human(data: dict[str, Any]) -> None:
        for path in data.get("unmounted") or []:
            click.echo(f"unmounted dead mount {path}")
        for path in data.get("removed") or []:
            click.echo(f"removed {path}")
        for kept in data.get("kept") or []:
            click.echo(f"kept {kept.get('path')}: {kept.get('reason')}")
        if not (data.get("removed") or data.get("kept") or data.get("unmounted")):
            click.echo("nothing to clean up")

    emit(result, as_json, human)


# ------------------------------------------------------------ backup, changes


def _add_backup_commands() -> None:
    from vspfs.backup import backup_cmd, changes_cmd

    cli.add_command(backup_cmd)
    cli.add_command(changes_cmd)


_add_backup_commands()


# ---------------------------------------------------------------------- main


def _usage_line(exc: click.ClickException) -> str:
    """A click usage error as one line, pointing at the right --help."""
    message = exc.format_message().strip().rstrip(".")
    message = " ".join(message.split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return f"{message} (see '{ctx.command_path} --help')"
    return message


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vspfs: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the CLI and turn every outcome into an exit code."""
    global _debug
    args = list(sys.argv[1:] if argv is None else argv)
    _debug = False
    # names that are not valid UTF-8 arrive as lone surrogates: print their
    # original bytes instead of failing with UnicodeEncodeError
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    try:
        rv = cli.main(args=args, prog_name="vspfs", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.UsageError as exc:
        _fail(_usage_line(exc), EXIT_USAGE)
    except click.exceptions.Abort:
        _fail("interrupted", EXIT_INTERRUPTED)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or EXIT_ERROR)
    except VspError as exc:
        if _debug_wanted():
            traceback.print_exc()
        code = exc.exit_code if isinstance(exc.exit_code, int) else EXIT_ERROR
        _fail(str(exc) or type(exc).__name__, code)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # stdout closed early (e.g. `vspfs list | head -1`): not an error worth a message
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        if _debug_wanted():
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", EXIT_ERROR)
    except Exception as exc:
        if _debug_wanted():
            traceback.print_exc()
            hint = ""
        else:
            hint = " (run with -v or VSPFS_DEBUG=1 for the traceback)"
        _fail(f"internal error: {type(exc).__name__}: {exc}{hint}", EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


if __name__ == "__main__":
    main()
