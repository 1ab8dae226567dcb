"""A short run of tools/soak.py (60 s): a real daemon, two volumes, writers, snapshot sets.

The soak itself checks every drive against the state at the snapshot
instant and every acknowledged write against the backing directories; this
test asserts it found nothing. It makes no timing assertion.

Known defect (see docs/reliability.md): every virtual drive leaves one socket
descriptor in the daemon (the auto_unmount channel to its fusermount3
helper, which also stays alive) after it is unmounted. While that is so, the
soak's open-descriptor check fails on that alone, and this test reports it
as an expected failure; any other problem fails the test.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parent.parent
DURATION = 60


def test_soak_60s() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "soak.py"), "--duration", str(DURATION), "--writers", "8"],
        capture_output=True,
        text=True,
        timeout=DURATION + 600,
        check=False,
    )
    report = done.stdout + done.stderr[-4000:]
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM:")]
    assert any(line.split() == ["mismatches", "0"] for line in done.stdout.splitlines()), report
    other = [p for p in problems if "open fds grew" not in p]
    assert not other, report
    if problems:
        # only the descriptor growth is left, and it is (nearly) all sockets; a
        # file or two may be open at the sampling instant
        found = re.search(r"growth by kind after cycle 1: (\{.*\})$", problems[0])
        assert len(problems) == 1 and found, report
        grown = ast.literal_eval(found.group(1))
        assert grown.get("socket", 0) > 0 and sum(grown.values()) - grown["socket"] <= 4, report
        pytest.xfail("known defect: one socket fd per unmounted drive stays open in the daemon\n" + report)
    assert done.returncode == 0, report
