"""Smoke test of the mount benchmark (tools/bench.py).

Runs it with tiny sizes (``--quick``) only to check that it still runs against
the current daemon, CLI and adapter, prints every row of its table and leaves
nothing behind. No timing is asserted: a loaded CI machine says nothing about
the code's speed. The benchmark starts its own daemon and bindfs as separate
processes, never touches a mount from a process that serves it, and unmounts
everything in its own ``finally``; this test checks that afterwards and, if
anything is left anyway, unmounts it itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vspfs.daemon import mount_table

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "tools" / "bench.py"
TIMEOUT = 900


def _rows() -> tuple[str, ...]:
    """The benchmark's row names, from the script itself."""
    spec = importlib.util.spec_from_file_location("bench_mounts", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return tuple(module.ROWS)


def _mounts_under(root: Path) -> list[str]:
    base = os.path.realpath(root)
    return [mp for mp in mount_table() if mp == base or mp.startswith(base + "/")]


@pytest.mark.skipif(shutil.which("bindfs") is None, reason="bindfs is missing (apt-get install bindfs)")
def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("VSPFS_SOCKET", None)
    env.pop("VSPFS_STATE_DIR", None)
    try:
        proc = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        left = _mounts_under(tmp_path)
    finally:
        for mp in sorted(_mounts_under(tmp_path), key=len, reverse=True):
            for args in (["-u"], ["-u", "-z"]):
                if mp not in mount_table():
                    break
                subprocess.run(["fusermount3", *args, mp], capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert left == [], f"the benchmark left mounts behind: {left}"
    lines = proc.stdout.splitlines()
    assert "| metric | vspfs | baseline | ratio | target | met? |" in lines
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| metric")]
    rows = _rows()
    assert len(table) == len(rows)
    for name in rows:
        matching = [line for line in table if line.startswith(f"| {name} |")]
        assert len(matching) == 1, f"row {name!r} missing from:\n{proc.stdout}"
        cells = [c.strip() for c in matching[0].strip("|").split("|")]
        assert len(cells) == 6 and all(cells), matching[0]
        assert "not run" not in cells, matching[0]
        assert cells[5] in ("yes", "**no**", "n/a"), matching[0]
    # the benchmark cleans up after itself
    assert list(tmp_path.iterdir()) == []
