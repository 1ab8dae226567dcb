"""The gate under contention: live changes enter and leave without a lock,
so check that a recorder holding it never overlaps a change."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from vspfs.gate import Gate


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_no_change_runs_while_the_gate_is_held(fast_switching: None) -> None:
    gate = Gate()
    inside = [0]
    count_lock = threading.Lock()
    stop = threading.Event()
    problems: list[str] = []
    entered = [0]

    def change() -> None:
        while not stop.is_set():
            gate.enter()
            try:
                with count_lock:
                    inside[0] += 1
                    entered[0] += 1
                with count_lock:
                    inside[0] -= 1
            finally:
                gate.exit()

    threads = [threading.Thread(target=change) for _ in range(4)]
    for t in threads:
        t.start()
    holds = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline or holds < 50:
            with gate.hold(timeout=10):
                holds += 1
                before = entered[0]
                for _ in range(20):
                    if inside[0]:
                        problems.append(f"hold {holds}: {inside[0]} change(s) inside")
                    time.sleep(0)
                if entered[0] != before:
                    problems.append(f"hold {holds}: a change entered while held")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not problems, problems[:5]
    assert entered[0] > holds, "the changes hardly ran: the test proved nothing"
    assert not gate._inflight, "every change left"
