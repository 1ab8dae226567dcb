"""Fuzzing the real daemon's request handlers through its control channel (issue 7).

tests/test_control.py attacks the channel itself (framing, keys, peers,
slow clients) with a stand-in handler. This file sends well-framed,
authenticated requests with arbitrary operations and arguments to a real
``vspfs serve`` daemon: every answer must be a result or a domain error with
its documented exit code, never an internal error (a handler that trusted
its input), and the daemon must keep serving. Path-like arguments stay
inside the test's temporary directory, so whatever a request manages to do
(snapshots, drives, jobs, cleanup) happens there and is undone at the end.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from daemon_helpers import Env, mounts_under, served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vspfs.control import InternalError, request
from vspfs.errors import VspError

pytestmark = pytest.mark.mount

OPS = [
    "snapshot.create",
    "mount",
    "unmount",
    "list",
    "status",
    "destroy",
    "cleanup",
    "changes",
    "job.start",
    "job.status",
    "job.finish",
]
KEYS = [
    "volumes",
    "snapshot",
    "snapshots",
    "dir",
    "mount",
    "mount_dir",
    "token",
    "offset",
    "limit",
    "policy",
    "cache_size",
    "max_cache_size",
    "volume_options",
    "busy_file_wait",
    "busy_file_timeout",
    "on_timeout",
    "on_error",
    "exclude_volumes",
    "cache_volumes",
    "job",
    "reason",
    "json",
]
#: keys whose value sets how long the daemon waits: kept short so that a
#: valid request cannot outlast the client's timeout
WAIT_KEYS = {"busy_file_wait", "busy_file_timeout"}


def values(env: Env, known: list[str]) -> st.SearchStrategy[Any]:
    """JSON values, biased towards what handlers expect and its near misses."""
    inside = st.sampled_from(["drive", "d/e", "new", "x" * 300, "a\nb", "..", "../.."]).map(
        lambda rel: os.path.join(env.base, "fz", rel)
    )
    strings = st.one_of(
        st.sampled_from(
            [
                env.backing,
                env.live,
                env.cache,
                env.backing + "/",
                "",
                "V:",
                "16M",
                "20%",
                "none",
                "-1",
                "1e400",
                "continue",
                "abort",
                "invalidate",
                "block",
            ]
        ),
        st.sampled_from(known) if known else st.nothing(),
        inside,
        st.text(max_size=20).map(lambda t: "x" + t),  # never absolute: cannot reach outside
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        strings,
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=4),
        ),
        max_leaves=8,
    )


def requests(env: Env, known: list[str]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    waits = st.one_of(st.floats(min_value=-1, max_value=0.2), st.integers(-5, 0), st.text(max_size=3))
    args = st.dictionaries(st.sampled_from(KEYS), values(env, known), max_size=6)
    op = st.one_of(st.sampled_from(OPS), st.text(max_size=12))

    def fix_waits(a: dict[str, Any], w: Any) -> dict[str, Any]:
        return {k: (w if k in WAIT_KEYS else v) for k, v in a.items()}

    return st.tuples(op, st.builds(fix_waits, args, waits))


def test_real_daemon_answers_any_request_cleanly() -> None:
    with served("vspz") as env:
        os.makedirs(os.path.join(env.base, "fz"))
        with open(os.path.join(env.live, "f"), "w") as f:
            f.write("data")
        snap = env.json("snapshot", "create", env.backing)["snapshots"][0]["id"]
        seen: dict[str, int] = {}

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(requests(env, [snap, "job-1", "1"]))
        def one(req: tuple[str, dict[str, Any]]) -> None:
            op, args = req
            try:
                request(op, args, socket_path=env.socket, timeout=30)
                outcome = "ok"
            except InternalError as exc:
                raise AssertionError(
                    f"{op} {args!r}: internal error: {exc}\n{env.log_text()[-3000:]}"
                ) from None
            except VspError as exc:
                assert 1 <= exc.exit_code < 70 and "\n" not in str(exc), (op, args, exc)
                outcome = type(exc).__name__
            seen[outcome] = seen.get(outcome, 0) + 1
            assert env.daemon is not None and env.daemon.poll() is None, env.log_text()[-3000:]

        one()
        print("outcomes:", seen)
        assert seen.get("ok", 0) > 0 and len(seen) > 2, seen
        # still serving, and everything the fuzz made can be taken down
        listing = env.json("list")
        ids = [s["id"] for s in listing["snapshots"]]
        if ids:
            env.ok("destroy", *ids)
        assert env.stop() == 0
        assert [m for m in mounts_under(env.base) if "/fz/" in m] == []
        assert not env.cache_files()
