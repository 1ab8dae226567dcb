"""Smoke test of the engine benchmark (tools/bench_engine.py).

Runs it with tiny sizes (``--quick``) only to check that it still runs against
the current engine API and prints every row of its table. No timing is
asserted: a loaded CI machine says nothing about the code's speed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "tools" / "bench_engine.py"


def _rows() -> tuple[str, ...]:
    """The benchmark's row names, from the script itself."""
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return tuple(module.ROWS)


def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
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
        assert cells[5] in ("yes", "**no**", "n/a"), matching[0]
    # the benchmark cleans up after itself
    assert list(tmp_path.iterdir()) == []
