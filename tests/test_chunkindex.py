"""The chunk index: a dict model, memory bounds, and lock-free readers
against a writer that inserts, splits sparse segments and promotes pages."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspfs.chunkindex import PAGE, PROMOTE, SEGMENT_MAX, ChunkIndex


def _offset(ino: int, chunk: int) -> int:
    """A distinct, recognisable offset per entry."""
    return 4096 + ino * 1_000_003 + chunk * 7


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.one_of(st.integers(0, 300), st.integers(0, 1 << 40))),
        max_size=600,
    ),
    st.integers(0, 2**32),
)
def test_index_matches_a_dict(puts: list[tuple[int, int]], seed: int) -> None:
    idx = ChunkIndex()
    model: dict[tuple[int, int], int] = {}
    for n, (ino, chunk) in enumerate(puts):
        idx.put(ino, chunk, 4096 + n)  # later copies of the same chunk must lose
        model.setdefault((ino, chunk), 4096 + n)
    assert idx.count == len(model)
    for (ino, chunk), off in model.items():
        assert idx.get(ino, chunk) == off
    rng = random.Random(seed)
    for ino in range(3):
        assert idx.chunks(ino) == sorted((c, o) for (i, c), o in model.items() if i == ino)
        assert idx.has_file(ino) == any(i == ino for i, _ in model)
        for _ in range(30):
            a = rng.randrange(310)
            b = a + rng.randrange(70)
            assert idx.get(ino, a) == model.get((ino, a), 0)
            assert idx.covers(ino, a, b) == all((ino, c) in model for c in range(a, b))


def test_dense_runs_fill_pages_and_stay_lean() -> None:
    idx = ChunkIndex()
    for c in range(PROMOTE - 1):
        idx.put(1, c, _offset(1, c))
    assert not idx.covers(1, 0, PROMOTE)
    assert idx.covers(1, 0, PROMOTE - 1)
    for c in range(PROMOTE - 1, 64 * PAGE):
        idx.put(1, c, _offset(1, c))
    assert idx.covers(1, 0, 64 * PAGE) and not idx.covers(1, 0, 64 * PAGE + 1)
    assert all(idx.get(1, c) == _offset(1, c) for c in range(64 * PAGE))
    assert idx.memory_bytes() / idx.count < 12


@pytest.mark.parametrize("one_in", [16, 1024])
def test_scattered_chunks_stay_under_32_bytes_each(one_in: int) -> None:
    rng = random.Random(one_in)
    n = 20 * SEGMENT_MAX
    idx = ChunkIndex()
    for c in rng.sample(range(one_in * n), n):
        idx.put(9, c, _offset(9, c))
    assert idx.count == n
    assert idx.memory_bytes() / n <= 32


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads as often as CPython allows, to interleave readers with
    the writer inside its multi-step updates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_lock_free_readers_never_miss_a_published_entry_nor_see_a_wrong_one(fast_switching: None) -> None:
    """A writer publishes entries (scattered, runs that promote pages, and
    enough to split segments many times); after each put returns it records
    the entry as published. Readers take no lock: any entry published before
    their lookup started must be found with its own offset, and any lookup
    must give 0 or the entry's own offset, never another's."""
    rng = random.Random(5)
    plan: list[tuple[int, int]] = []
    for _ in range(150):
        ino = rng.randrange(2)
        if rng.random() < 0.3:
            start = rng.randrange(0, 1 << 20)
            plan += [(ino, c) for c in range(start, start + rng.randrange(PROMOTE, 3 * PAGE))]
        else:
            plan += [(ino, rng.randrange(0, 1 << 20)) for _ in range(rng.randrange(50, 400))]
    rng.shuffle(plan[: len(plan) // 2])
    idx = ChunkIndex()
    published: list[tuple[int, int]] = []
    done = threading.Event()
    problems: list[str] = []

    def writer() -> None:
        for ino, chunk in plan:
            idx.put(ino, chunk, _offset(ino, chunk))
            published.append((ino, chunk))
        done.set()

    def reader(seed: int) -> None:
        r = random.Random(seed)
        while not done.is_set() and not problems:
            n = len(published)
            if n:
                ino, chunk = published[r.randrange(n)]
                got = idx.get(ino, chunk)
                if got != _offset(ino, chunk):
                    problems.append(f"published ({ino}, {chunk}) read as {got}")
                if not idx.covers(ino, chunk, chunk + 1):
                    problems.append(f"published ({ino}, {chunk}) not covered")
            ino, chunk = plan[r.randrange(len(plan))]
            got = idx.get(ino, chunk)
            if got not in (0, _offset(ino, chunk)):
                problems.append(f"({ino}, {chunk}) read as {got}, another entry's offset")

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    writer()
    for t in readers:
        t.join(60)
    assert not problems, problems[:5]
    assert idx.count == len(set(plan))
    assert all(idx.get(i, c) == _offset(i, c) for i, c in plan)
