"""Domain exceptions of the vspfs core.

The core never speaks errno or NTSTATUS: it raises these (or lets an OSError
from the backing filesystem through unchanged, because the live view must
report exactly the error the filesystem underneath gave). Each adapter maps
them in exactly one table (``mount/fuse.py``: errno, ``mount/winfsp.py``:
NTSTATUS), and the CLI maps them to exit codes through ``exit_code``.

Every message is one line that names the thing and says what to do.
"""

from __future__ import annotations


class VspError(Exception):
    """Base of every error vspfs reports on purpose."""

    #: documented process exit code when this error ends a CLI command (docs/cli.md)
    exit_code = 1


class UsageError(VspError):
    """Bad argument: wrong path, bad drive letter, unknown snapshot, bad size."""

    exit_code = 2


class DaemonNotRunning(VspError):
    """No daemon answers on the control socket."""

    exit_code = 3


class RuleViolation(VspError):
    """A VSP rule refuses the request (cache file on a snapshotted volume, ...)."""

    exit_code = 4


class CacheFileError(VspError):
    """A file is not a usable vspfs cache file: foreign, truncated or corrupt."""

    exit_code = 5


class SnapshotInvalid(VspError):
    """The snapshot can no longer be read exactly (cache overflow, cache volume full).

    Readers get EIO (or STATUS_UNEXPECTED_IO_ERROR); ``reason`` says why.
    """

    exit_code = 6

    def __init__(self, snapshot_id: str, reason: str) -> None:
        super().__init__(f"snapshot {snapshot_id} is invalid: {reason}")
        self.snapshot_id = snapshot_id
        self.reason = reason


class CacheOverflow(VspError):
    """The cache file cannot take another record (maximum reached or volume full).

    Raised by the cache file; the engine turns it into an invalid snapshot or,
    under the refuse-writes policy, into :class:`CacheFull` for the writer.
    """

    exit_code = 6


class CacheFull(VspError):
    """Live write refused to keep a snapshot valid (opt-in policy): maps to ENOSPC."""

    exit_code = 6


class ReadOnly(VspError):
    """Write attempted on a virtual drive: maps to EROFS / STATUS_MEDIA_WRITE_PROTECTED."""

    exit_code = 7


class NotFound(VspError):
    """A path that does not exist in a snapshot: maps to ENOENT."""

    exit_code = 2


class ProtectedName(VspError):
    """An application tried to touch a cache file or the retained area through
    the live view: maps to EPERM."""

    exit_code = 4


class MountError(VspError):
    """A mount could not be made or removed (busy mountpoint, no fusermount3...)."""

    exit_code = 8


class QuietPeriodTimeout(VspError):
    """No quiet period (no write for Busy File Wait seconds) came within Busy File Timeout."""

    exit_code = 12
