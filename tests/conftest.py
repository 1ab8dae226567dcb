"""Shared test fixtures and settings for every test tier.

Kept deliberately small and generic: each tier's own helpers live in its test
modules. What belongs here is what must be decided once for the whole run:
Hypothesis profiles (so CI and developers run the same tests at different
depths), the skip of real-mount tests on machines without FUSE, and a fresh
backing directory for tests that need a volume.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Profiles. Registered at import; pytest (>= 7.4, which honours testpaths for
# initial conftests) loads this file before Hypothesis reads --hypothesis-profile.
# Tests that need a specific depth set max_examples themselves; these are the
# defaults for the rest. "ci" is random on every run (derandomize=False) so CI
# keeps exploring, prints the blob to reproduce a failure, has no deadline (a
# 2-core machine running FUSE has unpredictable latency) and keeps no example
# database in the work tree.
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=False,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=20, deadline=None)


def pytest_configure(config: pytest.Config) -> None:
    """Use the small "dev" profile unless --hypothesis-profile chose one.

    ``VSPFS_HOSTFS=paths`` runs the engine over the by-path host filesystem
    binding, the one Windows uses (no dir_fd, no /proc/self/fd, directories
    reached through their current path), with Linux's answers to its
    primitives: ``.ci/run`` runs the engine tiers a second time that way."""
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile("dev")
    if os.environ.get("VSPFS_HOSTFS") == "paths":
        from vspfs import hostfs

        hostfs.use(hostfs.linux_path_calls())


def fuse_unavailable_reason() -> str | None:
    """Why real FUSE mounts cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``mount`` when this machine cannot mount FUSE, saying why.

    Checked once per session: a skip with a reason is honest where a failure
    would only report the machine, not the code.
    """
    reason = fuse_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"no FUSE: {reason}")
    for item in items:
        if item.get_closest_marker("mount") is not None:
            item.add_marker(skip)


@pytest.fixture
def tmp_volume(tmp_path: Path) -> str:
    """A fresh, empty backing directory for one test, as a ``str`` path.

    ``str`` because the core API takes ``str`` paths. It sits one level below
    ``tmp_path`` so a test can use ``tmp_path`` for siblings (cache volumes,
    mountpoints) on the same filesystem.
    """
    volume = tmp_path / "volume"
    volume.mkdir()
    return str(volume)
