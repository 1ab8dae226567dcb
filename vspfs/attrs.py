"""File attributes as the core reports them, independent of any binding.

One small immutable record serves the live view, the snapshot view and the
cache-file metadata records, so that adapters translate a single shape.
"""

from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Attr:
    mode: int
    ino: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    blksize: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Attr:
        return cls(
            mode=st.st_mode,
            ino=st.st_ino,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            rdev=st.st_rdev,
            size=st.st_size,
            blocks=st.st_blocks,
            blksize=st.st_blksize,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
        )

    def with_nlink(self, nlink: int) -> Attr:
        return replace(self, nlink=nlink)

    @property
    def is_dir(self) -> bool:
        return statmod.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return statmod.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return statmod.S_ISLNK(self.mode)

    @property
    def file_type(self) -> int:
        """The S_IFMT bits: what a directory listing records for an entry."""
        return statmod.S_IFMT(self.mode)
