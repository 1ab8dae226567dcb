"""Backup jobs without mounts: configuration file, database detection, drive
substitution, option precedence and the exit-status rules of `vspfs backup`."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from vspfs import backup, config
from vspfs.cli import cli, main
from vspfs.databases import detect
from vspfs.errors import UsageError

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------- config


def write(tmp_path: Path, text: str, name: str = "config.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSPFS_CONFIG", "")
    c = config.load()
    assert c.files == []
    assert c.get("backup", "busy_file_wait") == 5.0
    assert c.get("backup", "busy_file_timeout") == 300.0
    assert c.get("backup", "on_timeout") == "continue"
    assert c.get("backup", "on_error") == "continue"
    assert c.get("snapshot", "cache_size") == "16M"
    assert c.get("snapshot", "max_cache_size") == "20%"
    assert c.get("snapshot", "policy") == "invalidate"
    assert c.get(None, "cache_volumes") == []


def test_full_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
cache_volumes = ["/var/cache/vsp"]
exclude_volumes = ["/srv/scratch"]

[snapshot]
cache_size = 1048576
max_cache_size = "none"
policy = "refuse-writes"

[backup]
busy_file_wait = 0.5
busy_file_timeout = 30
on_timeout = "abort"
on_error = "abort"
cache_volumes = ["~/cache"]

[volumes."/srv/data"]
cache_size = "1G"
max_cache_size = "50%"
""",
    )
    c = config.load(path)
    assert c.files == [path]
    assert c.get(None, "cache_volumes") == ["/var/cache/vsp"]
    assert c.get("snapshot", "cache_size") == 1048576
    assert c.get("snapshot", "max_cache_size") is None
    assert c.get("backup", "busy_file_wait") == 0.5
    assert c.get("backup", "on_timeout") == "abort"
    assert c.get("backup", "cache_volumes")[0].endswith("/cache")
    assert c.get("backup", "cache_volumes")[0].startswith("/")
    assert c.volume_options() == {"/srv/data": {"cache_size": "1G", "max_cache_size": "50%"}}


def test_user_file_overrides_system_file_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write(tmp_path, "[backup]\nbusy_file_wait = 9\non_error = 'abort'\n", "system.toml")
    home = tmp_path / "xdg"
    (home / "vspfs").mkdir(parents=True)
    (home / "vspfs" / "config.toml").write_text("[backup]\nbusy_file_wait = 2\n")
    monkeypatch.delenv("VSPFS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    c = config.load()
    assert c.files == [system, str(home / "vspfs" / "config.toml")]
    assert c.get("backup", "busy_file_wait") == 2.0
    assert c.get("backup", "on_error") == "abort"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("busy_file_wait = 3\n", ["unknown key 'busy_file_wait'"]),
        ("[backup]\nbusy_file_wiat = 3\n", ["unknown key 'backup.busy_file_wiat'", "backup.busy_file_wait"]),
        ("[backup]\nbusy_file_wait = 'five'\n", ["backup.busy_file_wait", "'five'"]),
        ("[backup]\nbusy_file_wait = -1\n", ["backup.busy_file_wait", ">= 0"]),
        ("[backup]\nbusy_file_timeout = true\n", ["backup.busy_file_timeout"]),
        ("[backup]\non_timeout = 'wait'\n", ["backup.on_timeout", "'continue', 'abort'", "'wait'"]),
        ("[backup]\non_error = 1\n", ["backup.on_error"]),
        ("[snapshot]\ncache_size = '12 parsecs'\n", ["snapshot.cache_size", "12 parsecs"]),
        ("[snapshot]\nmax_cache_size = '150%'\n", ["snapshot.max_cache_size"]),
        ("[snapshot]\ncache_size = 'none'\n", ["snapshot.cache_size"]),
        ("[snapshot]\npolicy = 'never'\n", ["snapshot.policy"]),
        ("cache_volumes = 'not a list'\n", ["cache_volumes"]),
        ("cache_volumes = ['relative/dir']\n", ["cache_volumes", "absolute"]),
        ("backup = 3\n", ["backup must be a table"]),
        ('[volumes."/srv"]\npolicy = "invalidate"\n', ["unknown key", 'volumes."/srv".policy']),
        ('[volumes."/srv"]\nmax_cache_size = "lots"\n', ['volumes."/srv".max_cache_size']),
        ("[backup\n", ["not valid TOML"]),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert path in message
    for word in words:
        assert word in message
    assert info.value.exit_code == 2


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.toml"))


def test_config_error_through_the_cli_is_one_line_and_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[backup]\non_timeout = 'later'\n")
    monkeypatch.setenv("VSPFS_SOCKET", str(tmp_path / "none.sock"))
    with pytest.raises(SystemExit) as info:
        main(["--config", path, "backup", str(tmp_path), "--", "true"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vspfs: error: config file ")
    assert "backup.on_timeout" in err[0]


def test_command_line_beats_config_beats_defaults(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, "[backup]\nbusy_file_wait = 2\non_timeout = 'abort'\n"))
    o = backup.resolve_options({"busy_file_wait": 0.25, "max_cache_size": "none"}, c)
    assert o.busy_file_wait == 0.25  # command line
    assert o.on_timeout == "abort"  # file
    assert o.busy_file_timeout == 300.0  # default
    assert o.max_cache_size is None and o.cache_size == "16M"
    with pytest.raises(UsageError, match="--max-cache-size"):
        backup.resolve_options({"max_cache_size": "huge"}, c)


def test_sizes_for_every_volume_and_for_one(tmp_path: Path) -> None:
    c = config.load(
        write(tmp_path, '[snapshot]\nmax_cache_size = "5G"\n[volumes."/srv/a"]\nmax_cache_size = "1G"\n')
    )
    assert backup.resolve_sizes({}, c) == ("16M", "5G", {"/srv/a": {"max_cache_size": "1G"}})
    got = backup.resolve_sizes({"max_cache_size": ("/srv/b=2M",), "cache_size": ("1M",)}, c)
    assert got == ("1M", "5G", {"/srv/a": {"max_cache_size": "1G"}, "/srv/b": {"max_cache_size": "2M"}})
    # a plain size on the command line beats the file's per-volume sizes too
    got = backup.resolve_sizes({"max_cache_size": ("none", "/srv/c=1%")}, c)
    assert got == ("16M", None, {"/srv/a": {}, "/srv/c": {"max_cache_size": "1%"}})
    with pytest.raises(UsageError, match="--cache-size"):
        backup.resolve_sizes({"cache_size": ("/srv/a=lots",)}, c)


# -------------------------------------------------------------- databases


def _detect(open_paths: list[str], files: set[str], heads: dict[str, bytes] | None = None):
    return detect(open_paths, lambda p: p in files or p in open_paths, lambda p: (heads or {}).get(p, b""))


def test_sqlite_wal_and_journal() -> None:
    [hint] = _detect(["data/app.db", "data/app.db-wal", "data/app.db-shm"], set())
    assert (hint.kind, hint.path) == ("SQLite", "data/app.db")
    assert "app.db-wal is open for writing" in hint.evidence or "shm" in hint.evidence
    [hint] = _detect(["notes.sqlite"], {"notes.sqlite-journal"})
    assert hint.kind == "SQLite" and "notes.sqlite-journal exists" in hint.evidence
    [hint] = _detect(["plain.db"], set(), {"plain.db": b"SQLite format 3\x00 and more"})
    assert hint.kind == "SQLite"
    msg = hint.message("/srv")
    assert "crash-consistent" in msg and ".backup" in msg and "/srv/plain.db" in msg


def test_other_databases() -> None:
    found = _detect(
        [
            "pg/base/16384/2619",
            "mysql/ibdata1",
            "mysql/#innodb_redo/#ib_redo9",
            "mssql/sales.MDF",
            "mssql/sales_log.ldf",
            "lmdb/data.mdb",
            "mongo/collection-0.wt",
            "redis/appendonly.aof",
            "bdb/__db.001",
            "fb/employee.fdb",
        ],
        {"pg/PG_VERSION", "pg/postmaster.pid"},
    )
    kinds = {(h.kind, h.path) for h in found}
    assert ("PostgreSQL", "pg") in kinds
    assert ("MySQL/MariaDB (InnoDB)", "mysql") in kinds
    assert ("SQL Server", "mssql/sales.MDF") in kinds and ("SQL Server", "mssql/sales_log.ldf") in kinds
    assert ("LMDB", "lmdb") in kinds
    assert ("MongoDB (WiredTiger)", "mongo") in kinds
    assert ("Redis", "redis/appendonly.aof") in kinds
    assert ("Berkeley DB", "bdb") in kinds
    assert ("Firebird", "fb/employee.fdb") in kinds
    tools = {h.kind: h.tool for h in found}
    assert "pg_basebackup" in tools["PostgreSQL"] and "mdb_copy" in tools["LMDB"]


def test_ordinary_files_are_no_database() -> None:
    assert _detect(["logs/app.log", "docs/report.odt", "x"], set(), {"x": b"hello"}) == []
    # a PostgreSQL directory without postmaster.pid is not a running server
    assert _detect(["pg/base/1"], {"pg/PG_VERSION"}) == []


# ------------------------------------------------------- command and drives


def test_substitution() -> None:
    drives = {"/srv/data": "/tmp/job/data", "/srv/db": "/srv/db"}
    got = backup.substitute(
        ["tar", "-C", "{drive:/srv/data}", "--x={drive:db}/y", "find", "{}", "{drive:data}"], drives
    )
    assert got == ["tar", "-C", "/tmp/job/data", "--x=/srv/db/y", "find", "{}", "/tmp/job/data"]
    assert backup.substitute(["ls", "{drive}"], {"v": "/d"}) == ["ls", "/d"]
    with pytest.raises(UsageError, match="ambiguous"):
        backup.substitute(["ls", "{drive}"], drives)
    with pytest.raises(UsageError, match="names no volume"):
        backup.substitute(["ls", "{drive:other}"], drives)
    # {path} is a synonym (DESIGN.md names both), with its own word in errors
    assert backup.substitute(["ls", "{path}", "{path:v}/x"], {"v": "/d"}) == ["ls", "/d", "/d/x"]
    with pytest.raises(UsageError, match=r"\{path\} is ambiguous"):
        backup.substitute(["ls", "{path}"], drives)
    assert backup.drive_names(["{path:db}", "{drive}", "{pathx}"]) == ["db", None]


def test_check_command() -> None:
    backup.check_command(["true"], ["v"])
    with pytest.raises(UsageError, match="no command"):
        backup.check_command([], ["v"])
    with pytest.raises(UsageError, match="not found"):
        backup.check_command(["no-such-program-vspfs"], ["v"])
    with pytest.raises(UsageError, match="ambiguous"):
        backup.check_command(["ls", "{drive}"], ["a", "b"])
    with pytest.raises(UsageError, match="names no volume"):
        backup.check_command(["ls", "{drive:c}"], ["a", "b"])


def test_backup_usage_needs_the_command_after_dashes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["backup", "/tmp"])
    assert info.value.code == 2
    assert "give the backup command after --" in capsys.readouterr().err
    help_text = CliRunner().invoke(cli, ["backup", "--help"]).output
    assert "VOLUME... -- COMMAND [ARGS]..." in help_text
    for option in ("--busy-file-wait", "--busy-file-timeout", "--on-timeout", "--on-error", "--json"):
        assert option in help_text
    assert "--json" in CliRunner().invoke(cli, ["changes", "--help"]).output


def test_no_daemon_is_one_line_and_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSPFS_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.setenv("VSPFS_CONFIG", "")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as info:
        main(["backup", str(tmp_path), "--", "true"])
    assert info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no vspfs daemon is running" in err[0]
    assert signal.getsignal(signal.SIGINT) is handler  # the job's signal handlers are gone again


def test_stale_job_directories_go_but_nothing_else(tmp_path: Path) -> None:
    from vspfs.jobs import remove_stale_job_dirs

    jobs = tmp_path / "jobs-x"
    (jobs / "deadjob" / "data").mkdir(parents=True)
    (jobs / "busyjob" / "data").mkdir(parents=True)
    (jobs / "busyjob" / "data" / "file").write_text("not ours to delete")
    assert remove_stale_job_dirs(str(jobs)) == [str(jobs / "deadjob")]
    assert (jobs / "busyjob" / "data" / "file").read_text() == "not ours to delete"
    assert remove_stale_job_dirs(str(tmp_path / "none")) == []


# ------------------------------------------------------------- exit status


def vol(source: str, state: str | None = "valid", **extra: object) -> dict:
    return {"volume": "v", "source": source, "state": state, "invalid_reason": "full", **extra}


def test_exit_status_rules() -> None:
    ok = backup.CommandResult(["x"], returncode=0)
    failed = backup.CommandResult(["x"], returncode=3)
    killed = backup.CommandResult(["x"], returncode=-9)
    snap = {"volumes": [vol("snapshot")]}
    assert backup.outcome(snap, ok) == (0, "success")
    assert backup.outcome(snap, failed)[0] == 3
    assert backup.outcome(snap, killed)[0] == 137
    invalid = {"volumes": [vol("snapshot", "invalid")]}
    assert backup.outcome(invalid, failed)[0] == backup.EXIT_SNAPSHOT_INVALID
    assert backup.outcome(invalid, ok)[0] == backup.EXIT_SNAPSHOT_INVALID
    live = {"volumes": [vol("snapshot"), vol("live", None, live_reason="quiet period not found")]}
    assert backup.outcome(live, ok)[0] == backup.EXIT_NO_SNAPSHOT
    assert backup.outcome(live, failed)[0] == 3  # the command's failure says more
    excluded = {"volumes": [vol("live", None, excluded=True)]}
    assert backup.outcome(excluded, ok)[0] == 0  # excluded on purpose: not a degraded backup
    assert backup.outcome({"ended_by": "quiet-timeout"}, None)[0] == backup.EXIT_QUIET_ABORT
    assert backup.outcome({"ended_by": "snapshot-error"}, None)[0] == backup.EXIT_SNAPSHOT_ABORT
    not_started = backup.CommandResult(["x"], error="x: Permission denied")
    assert backup.outcome(snap, not_started)[0] == backup.EXIT_COMMAND_NOT_STARTED
    assert backup.outcome(invalid, ok, lost="daemon stopped")[0] == backup.EXIT_JOB_LOST
    assert backup.outcome(invalid, ok, interrupted=signal.SIGINT)[0] == 130
    assert backup.outcome(snap, ok, interrupted=signal.SIGTERM)[0] == 143


def test_exit_codes_are_documented() -> None:
    doc = (REPO / "docs" / "backup.md").read_text()
    cli_doc = (REPO / "docs" / "cli.md").read_text()
    for code in (10, 11, 12, 13, 14, 15):
        assert f"| {code} " in doc, code
        assert f"| {code} " in cli_doc, code


def test_report_renders(tmp_path: Path) -> None:
    report = {
        "exit_code": 0,
        "result": "success",
        "command": {"argv": ["tar", "-cf", "x", "."], "exit_code": 0, "duration_s": 1.5},
        "quiet_period": {"busy_file_wait": 5, "found": True, "waited_s": 5.2},
        "volumes": [
            {
                **vol("snapshot"),
                "snapshot": "s1",
                "cache_bytes": 2048,
                "cache_max": 1 << 30,
                "open_for_write": ["a.db-wal"],
            },
            {**vol("live", None), "live_reason": "excluded (/srv/x is in the VSP Volume Exclude List)"},
        ],
        "warnings": ["something"],
        "duration_s": 7.0,
    }
    text = "\n".join(backup.render_report(report))
    assert "success (exit 0)" in text and "snapshot s1" in text and "LIVE" in text
    assert "1.0 GiB" in text and "a.db-wal" in text and "warning       something" in text
    json.dumps(report)
