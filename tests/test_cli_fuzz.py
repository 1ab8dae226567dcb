"""Fuzzing the command line (issue 7: bad input).

Arbitrary argument lists built from the real commands, options and odd
values, run through ``main()`` as the console script runs it, with no daemon
listening: the outcome must be a documented exit code with at most one
``vspfs: error:`` line, never a traceback. ``serve`` and ``backup`` are left
out (they would start a daemon or wait for one); everything runs in a
temporary directory, so that relative paths a command might act on stay
there.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vspfs.cli import main

COMMANDS = [
    ["snapshot", "create"],
    ["mount"],
    ["unmount"],
    ["list"],
    ["status"],
    ["destroy"],
    ["cleanup"],
    ["changes"],
    ["snapshot"],
    [],
]
OPTIONS = [
    "--json",
    "--mount",
    "--cache-size",
    "--max-cache-size",
    "--policy",
    "--busy-file-wait",
    "--busy-file-timeout",
    "--exclude-volume",
    "--cache-volume",
    "--socket",
    "--config",
    "--limit",
    "--all",
    "-v",
    "--help",
    "--",
]
VALUES = ["", "-", "V:", "16M", "20%", "-5", "1e400", "nan", "none", "a\nb", "\udcff", "x" * 5000, "/", "."]
#: 0 ok, 1 generic, 2 usage, 3 no daemon, 4 rule, 5 cache file, 6 invalid, 8 mount
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8}


@pytest.fixture
def no_daemon(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VSPFS_SOCKET", str(tmp_path / "nothing.sock"))
    monkeypatch.setenv("VSPFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VSPFS_CONFIG", "")
    monkeypatch.delenv("VSPFS_DEBUG", raising=False)


argvs = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.text(max_size=12)), max_size=6),
).map(lambda t: [*t[0], *t[1]])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(argv=argvs)
def test_any_command_line_gives_a_documented_exit_and_no_traceback(
    no_daemon: None, capsysbinary: pytest.CaptureFixture[bytes], argv: list[str]
) -> None:
    capsysbinary.readouterr()  # nothing left over from an earlier example
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = os.fsdecode(capsysbinary.readouterr().err)  # names that are not UTF-8 come out as bytes
    code = 0 if exc.value.code is None else int(exc.value.code)
    assert code in DOCUMENTED, (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("vspfs: error:")]
    assert len(errors) <= 1, (argv, err)
    if code not in (0,) and "--help" not in argv:
        assert errors or err.startswith("Usage:"), (argv, code, err)
    assert not os.path.exists("state") or os.path.isdir("state")
