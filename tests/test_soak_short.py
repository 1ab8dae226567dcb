"""A short run of tools/soak.py (60 s): a real daemon, two volumes, writers, snapshot sets.

The soak itself checks every drive against the state at the snapshot
instant and every acknowledged write against the backing directories; this
test asserts it found nothing. It makes no timing assertion.

It also fails on growth of the daemon's open descriptors or child
processes: each drive's auto_unmount helper (a fusermount3 child watching a
socket of the daemon) must go when the drive is unmounted.
"""

from __future__ import annotations

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
    assert not problems, report
    assert done.returncode == 0, report
