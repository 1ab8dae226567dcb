"""The WinFsp adapter (mount/winfsp.py), tested on Linux without winfspy.

winfspy exists only on Windows, so the adapter is driven through a fake of
winfspy 0.8.4's interface (:func:`fake_winfspy`): the names the adapter uses
(FileSystem, BaseFileSystemOperations, NTStatusError and friends, the
NTSTATUS / FILE_ATTRIBUTE / CREATE_FILE_CREATE_OPTIONS enums with the values
of winfspy's source, ffi/lib for the raw buffers) and, in the fake base
class, ``ll_*`` methods that call the adapter's high-level methods exactly
as winfspy's src/winfspy/operations.py does: same argument order, same
return contract, NTStatusError -> its value, any other exception -> winfspy's
own catch-all (recorded, so a test can prove the adapter's catch-all ran
first). Directory enumeration is replayed the way WinFsp does it: entries
until the caller's buffer is full, then again with the last name as marker.

The callbacks run against a real Volume and real Snapshots of a temporary
directory (vspfs.provider.Provider), so what a Windows caller would see is
what the core does, copy-on-write included.

At the end, tests for a real Windows machine with WinFsp (skipped here),
run by .github/workflows/windows.yml.
"""

from __future__ import annotations

import enum
import errno
import inspect
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, NamedTuple

import pytest

from mount import winfsp
from vspfs import winplatform as wp
from vspfs.attrs import Attr
from vspfs.errors import (
    CacheFull,
    MountError,
    NotFound,
    ProtectedName,
    ReadOnly,
    RuleViolation,
    SnapshotInvalid,
    UsageError,
)

ROOT = Path(__file__).resolve().parent.parent
ON_WINDOWS = sys.platform == "win32"
needs_linux_core = pytest.mark.skipif(ON_WINDOWS, reason="the core (vspfs.volume) is Linux-only for now")

# NTSTATUS values as winfspy 0.8.4 defines them (src/winfspy/plumbing/status.py)
REAL_NTSTATUS = {
    "STATUS_SUCCESS": 0x0,
    "STATUS_REPARSE": 0x104,
    "STATUS_BUFFER_OVERFLOW": 0x80000005,
    "STATUS_DEVICE_BUSY": 0x80000011,
    "STATUS_NOT_IMPLEMENTED": 0xC0000002,
    "STATUS_INVALID_HANDLE": 0xC0000008,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_NO_SUCH_DEVICE": 0xC000000E,
    "STATUS_INVALID_DEVICE_REQUEST": 0xC0000010,
    "STATUS_END_OF_FILE": 0xC0000011,
    "STATUS_ACCESS_DENIED": 0xC0000022,
    "STATUS_BUFFER_TOO_SMALL": 0xC0000023,
    "STATUS_OBJECT_NAME_INVALID": 0xC0000033,
    "STATUS_OBJECT_NAME_NOT_FOUND": 0xC0000034,
    "STATUS_OBJECT_NAME_COLLISION": 0xC0000035,
    "STATUS_OBJECT_PATH_NOT_FOUND": 0xC000003A,
    "STATUS_SHARING_VIOLATION": 0xC0000043,
    "STATUS_FILE_LOCK_CONFLICT": 0xC0000054,
    "STATUS_LOCK_NOT_GRANTED": 0xC0000055,
    "STATUS_DELETE_PENDING": 0xC0000056,
    "STATUS_PRIVILEGE_NOT_HELD": 0xC0000061,
    "STATUS_INVALID_SECURITY_DESCR": 0xC0000079,
    "STATUS_DISK_FULL": 0xC000007F,
    "STATUS_INVALID_VOLUME_LABEL": 0xC0000086,
    "STATUS_FILE_INVALID": 0xC0000098,
    "STATUS_INSUFFICIENT_RESOURCES": 0xC000009A,
    "STATUS_MEDIA_WRITE_PROTECTED": 0xC00000A2,
    "STATUS_IO_TIMEOUT": 0xC00000B5,
    "STATUS_FILE_IS_A_DIRECTORY": 0xC00000BA,
    "STATUS_NOT_SUPPORTED": 0xC00000BB,
    "STATUS_NOT_SAME_DEVICE": 0xC00000D4,
    "STATUS_UNEXPECTED_IO_ERROR": 0xC00000E9,
    "STATUS_DIRECTORY_NOT_EMPTY": 0xC0000101,
    "STATUS_NOT_A_DIRECTORY": 0xC0000103,
    "STATUS_NAME_TOO_LONG": 0xC0000106,
    "STATUS_TOO_MANY_OPENED_FILES": 0xC000011F,
    "STATUS_CANCELLED": 0xC0000120,
    "STATUS_CANNOT_DELETE": 0xC0000121,
    "STATUS_PIPE_BROKEN": 0xC000014B,
    "STATUS_IO_DEVICE_ERROR": 0xC0000185,
    "STATUS_POSSIBLE_DEADLOCK": 0xC0000194,
    "STATUS_TOO_MANY_LINKS": 0xC0000265,
    "STATUS_NOT_A_REPARSE_POINT": 0xC0000275,
    "STATUS_IO_REPARSE_DATA_INVALID": 0xC0000278,
    "STATUS_IO_REPARSE_TAG_NOT_HANDLED": 0xC0000279,
    "STATUS_REPARSE_POINT_NOT_RESOLVED": 0xC0000280,
    "STATUS_DISK_QUOTA_EXCEEDED": 0xC0000802,
    "STATUS_FILE_TOO_LARGE": 0xC0000904,
}
NT = SimpleNamespace(**REAL_NTSTATUS)

# the keyword parameters of winfspy 0.8.4's _volume_params_factory (src/winfspy/file_system.py)
VOLUME_PARAMS = frozenset(
    [
        "sector_size",
        "sectors_per_allocation_unit",
        "max_component_length",
        "volume_creation_time",
        "volume_serial_number",
        "transact_timeout",
        "irp_timeout",
        "irp_capacity",
        "file_info_timeout",
        "case_sensitive_search",
        "case_preserved_names",
        "unicode_on_disk",
        "persistent_acls",
        "reparse_points",
        "reparse_points_access_check",
        "named_streams",
        "hard_links",
        "extended_attributes",
        "read_only_volume",
        "post_cleanup_when_modified_only",
        "pass_query_directory_pattern",
        "always_use_double_buffering",
        "pass_query_directory_file_name",
        "flush_and_purge_on_cleanup",
        "device_control",
        "um_file_context_is_user_context2",
        "um_file_context_is_full_context",
        "um_reserved_flags",
        "allow_open_in_kernel_mode",
        "case_preserved_extended_attributes",
        "wsl_features",
        "directory_marker_as_next_offset",
        "reject_irp_prior_to_transact0",
        "km_reserved_flags",
        "prefix",
        "file_system_name",
        "volume_info_timeout_valid",
        "dir_info_timeout_valid",
        "security_timeout_valid",
        "stream_info_timeout_valid",
        "km_additional_reserved_flags",
        "volume_info_timeout",
        "dir_info_timeout",
        "security_timeout",
        "stream_info_timeout",
    ]
)

# sizeof(FSP_FSCTL_DIR_INFO) on x64 (UINT16 + FSP_FSCTL_FILE_INFO + 24 bytes of padding)
DIR_INFO_SIZE = 104
READ_ACCESS = wp.FILE_GENERIC_READ
WRITE_ACCESS = wp.FILE_GENERIC_READ | wp.FILE_GENERIC_WRITE


# ==================================================================== the fake


def fake_winfspy() -> tuple[ModuleType, ModuleType]:
    """A winfspy stand-in with 0.8.4's names, values and ll_* contract."""
    mod = ModuleType("winfspy")
    plumbing = ModuleType("winfspy.plumbing")

    NTSTATUS = enum.IntEnum("NTSTATUS", REAL_NTSTATUS)

    class FILE_ATTRIBUTE(enum.IntEnum):
        FILE_ATTRIBUTE_ARCHIVE = 0x20
        FILE_ATTRIBUTE_DIRECTORY = 0x10
        FILE_ATTRIBUTE_HIDDEN = 0x2
        FILE_ATTRIBUTE_NORMAL = 0x80
        FILE_ATTRIBUTE_READONLY = 0x1
        FILE_ATTRIBUTE_REPARSE_POINT = 0x400
        FILE_ATTRIBUTE_SYSTEM = 0x4
        INVALID_FILE_ATTRIBUTES = 0xFFFFFFFF

    class CREATE_FILE_CREATE_OPTIONS(enum.IntEnum):
        FILE_DIRECTORY_FILE = 0x00000001
        FILE_WRITE_THROUGH = 0x00000002
        FILE_NON_DIRECTORY_FILE = 0x00000040
        FILE_DELETE_ON_CLOSE = 0x00001000
        FILE_OPEN_FOR_BACKUP_INTENT = 0x00004000
        FILE_OPEN_REPARSE_POINT = 0x00200000

    class WinFSPyError(Exception):
        pass

    class NTStatusError(WinFSPyError):
        @property
        def value(self) -> int:
            return self.args[0]

    def status_class(name: str, status: str) -> type:
        return type(name, (NTStatusError,), {"value": NTSTATUS[status]})

    class SecurityDescriptor(NamedTuple):
        handle: Any
        size: int

    class Ffi:
        NULL = None

        @staticmethod
        def buffer(handle: Any, size: int) -> bytes:
            return bytes(handle[:size])

        @staticmethod
        def memmove(dest: bytearray, src: bytes, n: int) -> None:
            dest[:n] = src[:n]

    class Lib:
        @staticmethod
        def GetSecurityDescriptorLength(handle: bytes) -> int:
            return wp.security_descriptor_length(handle)

    class BaseFileSystemOperations:
        """winfspy's base: its ll_* layer over Python values instead of cffi pointers."""

        def __init__(self) -> None:
            self._opened_objs: dict[int, Any] = {}
            self._next = 1
            self.unhandled: list[BaseException] = []

        # winfspy's _catch_unhandled_exceptions, plus "NTStatusError -> its value"
        def _call(self, fn: Any, *args: Any) -> tuple[int, Any]:
            try:
                return NTSTATUS.STATUS_SUCCESS, fn(*args)
            except NTStatusError as exc:
                return exc.value, None
            except BaseException as exc:
                self.unhandled.append(exc)
                return NTSTATUS.STATUS_UNEXPECTED_IO_ERROR, None

        def _hold(self, ctx: Any) -> int:
            h = self._next
            self._next += 1
            self._opened_objs[h] = ctx
            return h

        def ll_get_volume_info(self) -> tuple[int, dict | None]:
            status, vi = self._call(self.get_volume_info)
            if status == 0 and len(vi["volume_label"].encode("UTF-16-LE")) > 64:
                return NTSTATUS.STATUS_UNEXPECTED_IO_ERROR, None  # winfspy raises ValueError there
            return status, vi

        def ll_set_volume_label(self, label: str) -> int:
            if len(label) > 32:
                return NTSTATUS.STATUS_INVALID_VOLUME_LABEL
            return self._call(self.set_volume_label, label)[0]

        def ll_get_security_by_name(self, name: str, size: int = 4096) -> tuple[int, int, bytes]:
            status, r = self._call(self.get_security_by_name, name)
            if status != 0:
                return status, 0, b""
            fa, sd, sd_size = r
            if sd_size > size:
                return NTSTATUS.STATUS_BUFFER_OVERFLOW, fa, b""
            return status, fa, bytes(sd[:sd_size])

        def ll_create(
            self, name: str, options: int, access: int, attrs: int, sd: bytes | None, alloc: int = 0
        ) -> tuple[int, int, dict | None]:
            descriptor = SecurityDescriptor(sd, len(sd)) if sd else SecurityDescriptor(None, 0)
            status, ctx = self._call(self.create, name, options, access, attrs, descriptor, alloc)
            if status != 0:
                return status, 0, None
            h = self._hold(ctx)
            status, info = self.ll_get_file_info(h)
            return status, h, info

        def ll_open(
            self, name: str, options: int = 0, access: int = READ_ACCESS
        ) -> tuple[int, int, dict | None]:
            status, ctx = self._call(self.open, name, options, access)
            if status != 0:
                return status, 0, None
            h = self._hold(ctx)
            status, info = self.ll_get_file_info(h)
            return status, h, info

        def ll_overwrite(self, h: int, attrs: int, replace: bool, alloc: int = 0) -> tuple[int, dict | None]:
            status, _ = self._call(self.overwrite, self._opened_objs[h], attrs, replace, alloc)
            return (status, None) if status else self.ll_get_file_info(h)

        def ll_cleanup(self, h: int, name: str | None, flags: int) -> None:
            self._call(self.cleanup, self._opened_objs[h], name, flags)

        def ll_close(self, h: int) -> None:
            status, _ = self._call(self.close, self._opened_objs[h])
            if status == 0:
                del self._opened_objs[h]

        def ll_read(self, h: int, offset: int, length: int) -> tuple[int, bytes]:
            status, data = self._call(self.read, self._opened_objs[h], offset, length)
            return status, bytes(data or b"")

        def ll_write(
            self, h: int, data: bytes, offset: int, to_end: bool = False, constrained: bool = False
        ) -> tuple[int, int, dict | None]:
            buf = memoryview(bytearray(data))  # what ffi.buffer gives: a buffer, not bytes
            status, n = self._call(self.write, self._opened_objs[h], buf, offset, to_end, constrained)
            if status != 0:
                return status, 0, None
            status, info = self.ll_get_file_info(h)
            return status, n, info

        def ll_flush(self, h: int | None) -> int:
            return self._call(self.flush, None if h is None else self._opened_objs[h])[0]

        def ll_get_file_info(self, h: int) -> tuple[int, dict | None]:
            status, info = self._call(self.get_file_info, self._opened_objs[h])
            return status, (dict(info) if status == 0 else None)

        def ll_set_basic_info(
            self, h: int, attrs: int, ctime: int = 0, atime: int = 0, mtime: int = 0, chtime: int = 0
        ) -> tuple[int, dict | None]:
            out = SimpleNamespace()
            status, ret = self._call(
                self.set_basic_info, self._opened_objs[h], attrs, ctime, atime, mtime, chtime, out
            )
            return status, (dict(ret) if status == 0 else None)

        def ll_set_file_size(self, h: int, size: int, allocation: bool = False) -> tuple[int, dict | None]:
            status, _ = self._call(self.set_file_size, self._opened_objs[h], size, allocation)
            return (status, None) if status else self.ll_get_file_info(h)

        def ll_can_delete(self, h: int, name: str) -> int:
            return self._call(self.can_delete, self._opened_objs[h], name)[0]

        def ll_set_delete(self, h: int, name: str, delete: bool) -> int:
            return self._call(self.set_delete, self._opened_objs[h], name, delete)[0]

        def delete_request(self, h: int, name: str) -> int:
            """DeleteFile/RemoveDirectory: SetDelete when the class defines it, else CanDelete."""
            if type(self).set_delete is not BaseFileSystemOperations.set_delete:
                return self.ll_set_delete(h, name, True)
            return self.ll_can_delete(h, name)

        def ll_rename(self, h: int, name: str, new: str, replace: bool) -> int:
            return self._call(self.rename, self._opened_objs[h], name, new, bool(replace))[0]

        def ll_get_security(self, h: int, size: int = 4096) -> tuple[int, bytes]:
            status, r = self._call(self.get_security, self._opened_objs[h])
            if status != 0:
                return status, b""
            sd, sd_size = r
            if sd_size > size:
                return NTSTATUS.STATUS_BUFFER_OVERFLOW, b""
            return status, bytes(sd[:sd_size])

        def ll_set_security(self, h: int, info: int, modification: bytes) -> int:
            return self._call(self.set_security, self._opened_objs[h], info, modification)[0]

        def ll_read_directory(self, h: int, marker: str | None, length: int) -> tuple[int, list[dict], bool]:
            """One ReadDirectory: entries until ``length`` bytes are used (FspFileSystemAddDirInfo,
            8-byte aligned); True when the end marker fitted too."""
            status, entries = self._call(self.read_directory, self._opened_objs[h], marker)
            if status != 0:
                return status, [], False
            out: list[dict] = []
            used = 0
            try:
                for entry in entries:
                    encoded = entry["file_name"].encode("UTF-16-LE")
                    size = (DIR_INFO_SIZE + len(encoded) + 7) // 8 * 8
                    if used + size > length:
                        return NTSTATUS.STATUS_SUCCESS, out, False
                    info = dict(**entry)  # what configure_file_info(**entry_info) reads
                    out.append(info)
                    used += size
            except BaseException as exc:
                self.unhandled.append(exc)
                return NTSTATUS.STATUS_UNEXPECTED_IO_ERROR, out, False
            return NTSTATUS.STATUS_SUCCESS, out, used + 8 <= length

        def enumerate_dir(self, h: int, length: int = 1024) -> list[dict]:
            """FindFirstFile/FindNextFile to the end: WinFsp's marker is the last name returned."""
            marker = None
            seen: list[dict] = []
            for _ in range(100000):
                status, got, ended = self.ll_read_directory(h, marker, length)
                assert status == 0, hex(status)
                seen.extend(got)
                if ended or (not got and marker is not None):
                    return seen
                marker = got[-1]["file_name"] if got else marker
            raise AssertionError("enumeration does not end")

        def ll_get_dir_info_by_name(self, h: int, name: str) -> tuple[int, dict | None]:
            status, info = self._call(self.get_dir_info_by_name, self._opened_objs[h], name)
            return status, (dict(info, file_name=name) if status == 0 else None)

        def ll_get_reparse_point(self, h: int, name: str, size: int = 16384) -> tuple[int, bytes]:
            buf, p_size = bytearray(size), [size]
            status, _ = self._call(self.get_reparse_point, self._opened_objs[h], name, buf, p_size)
            return status, bytes(buf[: p_size[0]]) if status == 0 else b""

        def ll_set_reparse_point(self, h: int, name: str, data: bytes) -> int:
            return self._call(self.set_reparse_point, self._opened_objs[h], name, data, len(data))[0]

        def ll_resolve_reparse_points(
            self, name: str, index: int = 0, resolve_last: bool = True, size: int = 16384
        ) -> tuple[int, str]:
            buf, p_size, io_status = bytearray(size), [size], SimpleNamespace(Status=0, Information=0)
            status, _ = self._call(
                self.resolve_reparse_points, name, index, resolve_last, io_status, buf, p_size
            )
            # FspFileSystemCallResolveReparsePoints: any success is STATUS_REPARSE/IO_REPARSE
            if status == 0:
                assert io_status.Information == 0  # IO_REPARSE: a path, not reparse data
                return NTSTATUS.STATUS_REPARSE, bytes(buf[: p_size[0]]).decode("utf-16-le")
            return status, ""

        # winfspy's high-level stubs (NotImplementedError) for what the adapter must override
        def set_delete(self, file_context: Any, file_name: str, delete_file: bool) -> None:
            pass

        def get_dir_info_by_name(self, file_context: Any, file_name: str) -> dict:
            raise NotImplementedError()

    class FileSystem:
        def __init__(
            self, mountpoint: str, operations: Any, debug: bool = False, **volume_params: Any
        ) -> None:
            if not isinstance(operations, BaseFileSystemOperations):
                raise ValueError("`operations` must be a `BaseFileSystemOperations` instance.")
            unknown = set(volume_params) - VOLUME_PARAMS
            if unknown:
                raise TypeError(
                    f"_volume_params_factory() got unexpected keyword arguments {sorted(unknown)}"
                )
            if volume_params.get("pass_query_directory_pattern"):
                raise ValueError("The `pass_query_directory_pattern` mode is not supported at the moment")
            self.mountpoint = mountpoint
            self.operations = operations
            self.volume_params = dict(volume_params)
            if type(operations).get_dir_info_by_name is not BaseFileSystemOperations.get_dir_info_by_name:
                self.volume_params.setdefault("pass_query_directory_file_name", True)
            self.set_delete_available = type(operations).set_delete is not BaseFileSystemOperations.set_delete
            self.started = False
            self.fail_start: str | None = None

        def start(self) -> None:
            if self.started:
                raise WinFSPyError("already started")
            if self.fail_start:
                raise WinFSPyError(self.fail_start)
            self.started = True

        def stop(self) -> None:
            if not self.started:
                raise WinFSPyError("not started")
            self.started = False

    for name, value in [
        ("NTSTATUS", NTSTATUS),
        ("FILE_ATTRIBUTE", FILE_ATTRIBUTE),
        ("CREATE_FILE_CREATE_OPTIONS", CREATE_FILE_CREATE_OPTIONS),
        ("WinFSPyError", WinFSPyError),
        ("NTStatusError", NTStatusError),
        (
            "NTStatusObjectNameNotFound",
            status_class("NTStatusObjectNameNotFound", "STATUS_OBJECT_NAME_NOT_FOUND"),
        ),
        ("NTStatusEndOfFile", status_class("NTStatusEndOfFile", "STATUS_END_OF_FILE")),
        (
            "NTStatusMediaWriteProtected",
            status_class("NTStatusMediaWriteProtected", "STATUS_MEDIA_WRITE_PROTECTED"),
        ),
        ("BaseFileSystemOperations", BaseFileSystemOperations),
        ("FileSystem", FileSystem),
    ]:
        setattr(mod, name, value)
    plumbing.ffi = Ffi()
    plumbing.lib = Lib()
    plumbing.SecurityDescriptor = SecurityDescriptor
    plumbing.NTSTATUS = NTSTATUS
    mod.plumbing = plumbing
    return mod, plumbing


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    mod, plumbing = fake_winfspy()
    monkeypatch.setitem(sys.modules, "winfspy", mod)
    monkeypatch.setitem(sys.modules, "winfspy.plumbing", plumbing)
    return mod


@pytest.fixture(autouse=True)
def _unmount_everything() -> Iterator[None]:
    """Mounts are registered process-wide (one drive letter, one mount): end each test clean."""
    yield
    for m in winfsp.active_mounts():
        m.unmount()


@pytest.fixture
def no_winfspy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "winfspy", raising=False)
    monkeypatch.delitem(sys.modules, "winfspy.plumbing", raising=False)


# ===================================================== environment (real core)

TEST_SD_XATTR = "user.vspfs.test_sd"
SDDL_A = "O:BAG:SYD:P(A;;FA;;;SY)(A;;FR;;;BU)"
SDDL_B = "O:BAG:SYD:P(A;;FA;;;SY)(A;;FA;;;WD)"


@dataclass
class Env:
    provider: Any
    vol: Any
    backing: Path

    def snapshot(self) -> Any:
        [snap] = self.provider.create_snapshot_set([self.vol])
        return snap


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    if ON_WINDOWS:
        pytest.skip("the core (vspfs.volume) is Linux-only for now")
    from vspfs.provider import Provider

    backing = tmp_path / "data"
    backing.mkdir()
    provider = Provider(str(tmp_path / "state"))
    vol = provider.add_volume(str(backing), chunk_size=16)
    try:
        yield Env(provider, vol, backing)
    finally:
        provider.close()


def put(vol: Any, path: str, data: bytes, mode: int = 0o644) -> None:
    fh = vol.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        vol.write(fh, data, 0)
    finally:
        vol.release(fh)


def tree(env: Env) -> None:
    """A small volume: files, directories, a hard link, symlinks, awkward names."""
    vol = env.vol
    vol.mkdir("/Docs", 0o755)
    vol.mkdir("/Docs/Sub", 0o750)
    put(vol, "/Docs/Report.txt", b"original report")
    put(vol, "/Docs/Sub/deep.bin", bytes(range(200)))
    put(vol, "/readonly.txt", b"ro", 0o444)
    put(vol, "/a:b", b"colon")
    put(vol, "/big.dat", b"x" * 100)
    vol.link("/Docs/Report.txt", "/hardlink.txt")
    vol.symlink("Docs/Report.txt", "/to-report")
    vol.symlink("Docs", "/to-docs")
    vol.setxattr("/Docs/Report.txt", TEST_SD_XATTR, wp.sddl_to_bytes(SDDL_A))


def snapshot_ops(fake: ModuleType, snap: Any, letter: str = "V:") -> Any:
    handle = winfsp.mount_snapshot_drive(snap, letter, taken=set())
    ops = handle.operations
    ops.security_xattr = TEST_SD_XATTR
    return handle, ops


def live_ops(fake: ModuleType, env: Env, letter: str = "L:") -> Any:
    handle = winfsp.mount_live_drive(env.vol, letter, taken=set())
    ops = handle.operations
    ops.security_xattr = TEST_SD_XATTR
    return handle, ops


def backing_names(env: Env) -> list[str]:
    """The backing directory's root as applications see it (without vspfs's own names)."""
    from vspfs.volume import is_hidden_root_name

    return sorted(n for n in os.listdir(env.backing) if not is_hidden_root_name(n))


def read_all(ops: Any, name: str, chunk: int = 7) -> bytes:
    status, h, _ = ops.ll_open(name)
    assert status == 0, hex(status)
    out = b""
    try:
        while True:
            status, data = ops.ll_read(h, len(out), chunk)
            if status == NT.STATUS_END_OF_FILE:
                return out
            assert status == 0, hex(status)
            out += data
    finally:
        ops.ll_cleanup(h, None, 0)
        ops.ll_close(h)


# ========================================================= import and loading


def test_import_needs_no_winfspy() -> None:
    code = "import sys, mount.winfsp; assert 'winfspy' not in sys.modules; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.skipif(ON_WINDOWS, reason="checks the refusal off Windows")
def test_drive_letters_need_windows(no_winfspy: None) -> None:
    snap = SimpleNamespace(id="s1", created_ns=0, volume=SimpleNamespace(name="data"))
    with pytest.raises(MountError, match="drive letters need Windows with WinFsp"):
        winfsp.mount_snapshot_drive(snap, "V:")  # type: ignore[arg-type]
    with pytest.raises(MountError, match="Windows"):
        winfsp.mount_live_drive(SimpleNamespace(backing="/x", volume_id="v", name="x"), "L:")  # type: ignore[arg-type]
    with pytest.raises(MountError, match="vspfs mount SNAPSHOT DIR"):
        winfsp.load_winfspy()


def test_a_bad_letter_is_a_usage_error_before_anything_else(no_winfspy: None) -> None:
    snap = SimpleNamespace(id="s1", created_ns=0, volume=SimpleNamespace(name="data"))
    with pytest.raises(UsageError, match="bad drive letter"):
        winfsp.mount_snapshot_drive(snap, "VV")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="bad mount target"):
        winfsp.mount_snapshot_drive(snap, "relative\\dir")  # type: ignore[arg-type]


def test_a_winfspy_without_the_needed_names_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "winfspy", ModuleType("winfspy"))
    with pytest.raises(MountError, match="winfspy lacks FileSystem"):
        winfsp.load_winfspy()


def test_operation_classes_are_winfspy_operations(fake: ModuleType) -> None:
    cls = winfsp.operations_class(winfsp.SnapshotOperations)
    assert issubclass(cls, fake.BaseFileSystemOperations)
    assert winfsp.operations_class(winfsp.SnapshotOperations) is cls  # built once
    assert cls.__mro__[1] is winfsp.SnapshotOperations


@pytest.mark.parametrize("mixin", [winfsp.SnapshotOperations, winfsp.LiveOperations])
def test_callbacks_have_winfspys_signatures(mixin: type) -> None:
    """Every high-level method winfspy's ll_* layer calls, with its positional arity."""
    arity = {
        "get_volume_info": 0,
        "set_volume_label": 1,
        "get_security_by_name": 1,
        "create": 6,
        "open": 3,
        "overwrite": 4,
        "cleanup": 3,
        "close": 1,
        "read": 3,
        "write": 5,
        "flush": 1,
        "get_file_info": 1,
        "set_basic_info": 7,
        "set_file_size": 3,
        "can_delete": 2,
        "rename": 4,
        "get_security": 1,
        "set_security": 3,
        "read_directory": 2,
        "resolve_reparse_points": 6,
        "get_reparse_point": 4,
        "set_reparse_point": 4,
        "delete_reparse_point": 4,
        "get_stream_info": 4,
        "get_dir_info_by_name": 2,
        "set_delete": 3,
    }
    for name, n in arity.items():
        fn = inspect.unwrap(getattr(mixin, name))
        params = list(inspect.signature(fn).parameters.values())[1:]
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(positional) == n, name


# ============================================================= the NTSTATUS table


def test_ntstatus_constants_are_winfspys() -> None:
    for name, value in REAL_NTSTATUS.items():
        assert getattr(winfsp, name) == value, name


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (SnapshotInvalid("s1", "cache full"), NT.STATUS_UNEXPECTED_IO_ERROR),
        (CacheFull("no room"), NT.STATUS_DISK_FULL),
        (ProtectedName("VSP_x.vsp"), NT.STATUS_ACCESS_DENIED),
        (ReadOnly("snapshot"), NT.STATUS_MEDIA_WRITE_PROTECTED),
        (NotFound("x"), NT.STATUS_OBJECT_NAME_NOT_FOUND),
        (FileNotFoundError(errno.ENOENT, "x"), NT.STATUS_OBJECT_NAME_NOT_FOUND),
        (OSError(errno.ENOTDIR, "x"), NT.STATUS_OBJECT_PATH_NOT_FOUND),
        (OSError(errno.EEXIST, "x"), NT.STATUS_OBJECT_NAME_COLLISION),
        (OSError(errno.EACCES, "x"), NT.STATUS_ACCESS_DENIED),
        (OSError(errno.EPERM, "x"), NT.STATUS_ACCESS_DENIED),
        (OSError(errno.EISDIR, "x"), NT.STATUS_FILE_IS_A_DIRECTORY),
        (OSError(errno.ENOTEMPTY, "x"), NT.STATUS_DIRECTORY_NOT_EMPTY),
        (OSError(errno.ENOSPC, "x"), NT.STATUS_DISK_FULL),
        (OSError(errno.EDQUOT, "x"), NT.STATUS_DISK_QUOTA_EXCEEDED),
        (OSError(errno.EROFS, "x"), NT.STATUS_MEDIA_WRITE_PROTECTED),
        (OSError(errno.EIO, "x"), NT.STATUS_IO_DEVICE_ERROR),
        (OSError(errno.EBADF, "x"), NT.STATUS_INVALID_HANDLE),
        (OSError(errno.EINVAL, "x"), NT.STATUS_INVALID_PARAMETER),
        (OSError(errno.ENAMETOOLONG, "x"), NT.STATUS_NAME_TOO_LONG),
        (OSError(errno.EMFILE, "x"), NT.STATUS_TOO_MANY_OPENED_FILES),
        (OSError(errno.EXDEV, "x"), NT.STATUS_NOT_SAME_DEVICE),
        (OSError(errno.ELOOP, "x"), NT.STATUS_REPARSE_POINT_NOT_RESOLVED),
        (OSError(errno.EOPNOTSUPP, "x"), NT.STATUS_NOT_SUPPORTED),
        (OSError(errno.ESTALE, "x"), NT.STATUS_FILE_INVALID),
        (wp.SecurityDescriptorError("bad"), NT.STATUS_INVALID_SECURITY_DESCR),
        (UnicodeEncodeError("utf-16-le", "\udce9", 0, 1, "surrogate"), NT.STATUS_OBJECT_NAME_INVALID),
        (winfsp.NtStatus(NT.STATUS_END_OF_FILE), NT.STATUS_END_OF_FILE),
    ],
)
def test_the_one_table(exc: BaseException, status: int, caplog: pytest.LogCaptureFixture) -> None:
    assert winfsp.ntstatus_of(exc, "op") == status


def test_subclasses_take_their_nearest_listed_base() -> None:
    class Deeper(ReadOnly):
        pass

    assert winfsp.ntstatus_of(Deeper("x")) == NT.STATUS_MEDIA_WRITE_PROTECTED
    assert winfsp.ntstatus_of(PermissionError(errno.EACCES, "x")) == NT.STATUS_ACCESS_DENIED


def test_winerror_wins_over_errno() -> None:
    exc = PermissionError(errno.EACCES, "in use")
    exc.winerror = 32  # type: ignore[attr-defined] - ERROR_SHARING_VIOLATION, errno EACCES on Windows
    assert winfsp.ntstatus_of(exc) == NT.STATUS_SHARING_VIOLATION
    exc.winerror = 99999  # type: ignore[attr-defined]
    assert winfsp.ntstatus_of(exc) == NT.STATUS_ACCESS_DENIED


def test_unlisted_errors_are_unexpected_io_errors_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="mount.winfsp")
    assert winfsp.ntstatus_of(OSError(errno.ECHILD, "odd"), "read") == NT.STATUS_UNEXPECTED_IO_ERROR
    assert "no NTSTATUS" in caplog.text and "read" in caplog.text
    caplog.clear()
    assert winfsp.ntstatus_of(RuleViolation("rule"), "create") == NT.STATUS_UNEXPECTED_IO_ERROR
    assert "rule" in caplog.text
    caplog.clear()
    try:
        {}["bug"]
    except KeyError as exc:
        assert winfsp.ntstatus_of(exc, "open") == NT.STATUS_UNEXPECTED_IO_ERROR
    assert "unexpected KeyError" in caplog.text and "Traceback" in caplog.text


def test_an_invalid_snapshot_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mount.winfsp")
    exc = SnapshotInvalid("once-only", "the cache volume is full")
    for _ in range(3):
        assert winfsp.ntstatus_of(exc, "read") == NT.STATUS_UNEXPECTED_IO_ERROR
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "the cache volume is full" in errors[0].getMessage()


def test_translated_raises_winfspys_error_when_loaded(fake: ModuleType) -> None:
    class Ops:
        _label = "t"

        @winfsp.translated
        def read(self) -> None:
            raise OSError(errno.ENOENT, "gone")

    with pytest.raises(fake.NTStatusError) as info:
        Ops().read()
    assert info.value.value == NT.STATUS_OBJECT_NAME_NOT_FOUND


def test_translated_raises_ntstatus_without_winfspy(no_winfspy: None) -> None:
    class Ops:
        _label = "t"

        @winfsp.translated
        def read(self) -> None:
            raise ReadOnly("ro")

    with pytest.raises(winfsp.NtStatus) as info:
        Ops().read()
    assert info.value.value == NT.STATUS_MEDIA_WRITE_PROTECTED


# ============================================================ pure translation


def attr(mode: int, **kw: int) -> Attr:
    base = {
        "ino": 77,
        "nlink": 1,
        "uid": 1000,
        "gid": 100,
        "rdev": 0,
        "size": 5000,
        "blocks": 16,
        "blksize": 4096,
        "atime_ns": 3_000_000_000,
        "mtime_ns": 2_000_000_000,
        "ctime_ns": 2_500_000_000,
    }
    base.update(kw)
    return Attr(mode=mode, **base)


def test_file_info_of_a_regular_file() -> None:
    info = winfsp.file_info(attr(stat.S_IFREG | 0o644))
    assert info == {
        "file_attributes": wp.FILE_ATTRIBUTE_ARCHIVE,
        "reparse_tag": 0,
        "allocation_size": 8192,
        "file_size": 5000,
        "creation_time": wp.EPOCH_AS_FILETIME + 20_000_000,
        "last_access_time": wp.EPOCH_AS_FILETIME + 30_000_000,
        "last_write_time": wp.EPOCH_AS_FILETIME + 20_000_000,
        "change_time": wp.EPOCH_AS_FILETIME + 25_000_000,
        "index_number": 77,
    }


def test_file_info_of_directories_and_links() -> None:
    d = winfsp.file_info(attr(stat.S_IFDIR | 0o755, size=4096))
    assert (d["file_attributes"], d["file_size"], d["allocation_size"]) == (wp.FILE_ATTRIBUTE_DIRECTORY, 0, 0)
    link = winfsp.file_info(attr(stat.S_IFLNK | 0o777, size=11, ctime_ns=1_000_000_000))
    assert link["file_attributes"] == wp.FILE_ATTRIBUTE_REPARSE_POINT
    assert link["reparse_tag"] == wp.IO_REPARSE_TAG_SYMLINK and link["file_size"] == 0
    assert link["creation_time"] == wp.EPOCH_AS_FILETIME + 10_000_000  # the earlier of mtime and ctime


def test_labels_fit_32_utf16_units() -> None:
    t = 1717243200 * 10**9  # 2024-06-01 12:00:00 UTC
    assert winfsp.snapshot_label("data", t) == "data 20240601-120000Z"
    long = winfsp.snapshot_label("a-very-long-volume-name-indeed", t)
    assert long.endswith(" 20240601-120000Z") and wp.utf16_len(long) <= 32
    emoji = winfsp.snapshot_label("\U0001f600" * 20, t)
    assert wp.utf16_len(emoji) <= 32 and wp.is_utf16_encodable(emoji)
    assert winfsp.snapshot_label("\n\t", t).startswith("vspfs ")
    assert winfsp.live_label("data") == "vspfs data"
    assert wp.utf16_len(winfsp.live_label("x" * 100)) == 32


def test_volume_parameters_are_winfspys(fake: ModuleType) -> None:
    snap = winfsp.snapshot_volume_params("20240601T120000-abcdef", 10**18, "V:")
    live = winfsp.live_volume_params("vol1", "L:", created_ns=10**18)
    for params in (snap, live, winfsp.snapshot_volume_params("s", 0, "C:\\mnt\\snap")):
        assert set(params) <= VOLUME_PARAMS
        assert params["um_file_context_is_user_context2"] == 1  # winfspy's ll_* need it (ffi.from_handle)
        assert params["case_sensitive_search"] == 0 and params["case_preserved_names"] == 1
        assert params["reparse_points"] == 1 and params["named_streams"] == 0
        assert params["sector_size"] * params["sectors_per_allocation_unit"] == winfsp.ALLOCATION_UNIT
    assert snap["read_only_volume"] == 1 and live["read_only_volume"] == 0
    assert snap["file_info_timeout"] == winfsp.INFINITE and live["file_info_timeout"] == 0
    assert snap["volume_serial_number"] == wp.volume_serial("20240601T120000-abcdef")
    assert snap["volume_serial_number"] != live["volume_serial_number"]
    assert snap["volume_creation_time"] == wp.ns_to_filetime(10**18)
    assert snap["reject_irp_prior_to_transact0"] == 0
    assert winfsp.snapshot_volume_params("s", 0, "C:\\mnt\\snap")["reject_irp_prior_to_transact0"] == 1
    assert live["flush_and_purge_on_cleanup"] == 1


# ============================================================ the snapshot drive


@needs_linux_core
def test_snapshot_drive_shows_the_past(fake: ModuleType, env: Env) -> None:
    tree(env)
    snap = env.snapshot()
    vol = env.vol
    # change everything through the live view after the snapshot
    fh = vol.open("/Docs/Report.txt", os.O_WRONLY)
    vol.write(fh, b"CHANGED", 0)
    vol.release(fh)
    vol.rename("/Docs/Sub", "/Moved")
    vol.unlink("/big.dat")
    put(vol, "/new-after.txt", b"new")
    vol.chmod("/readonly.txt", 0o644)

    handle, ops = snapshot_ops(fake, snap)
    assert handle.mounted and handle.wait_ready(1)
    assert handle.file_system.mountpoint == "V:"
    assert handle.file_system.volume_params["read_only_volume"] == 1

    assert read_all(ops, "\\Docs\\Report.txt") == b"original report"
    assert read_all(ops, "\\Docs\\Sub\\deep.bin") == bytes(range(200))
    assert read_all(ops, "\\big.dat") == b"x" * 100
    status, _, _ = ops.ll_open("\\new-after.txt")
    assert status == NT.STATUS_OBJECT_NAME_NOT_FOUND
    status, fa, _ = ops.ll_get_security_by_name("\\readonly.txt")
    assert status == 0 and fa & wp.FILE_ATTRIBUTE_READONLY
    assert handle.unmount(1) == "unmounted" and not handle.mounted
    assert handle.unmount(1) == "not mounted"


@needs_linux_core
def test_snapshot_names_are_case_insensitive_and_encoded(fake: ModuleType, env: Env) -> None:
    tree(env)
    _, ops = snapshot_ops(fake, env.snapshot())
    assert read_all(ops, "\\DOCS\\report.TXT") == b"original report"
    assert read_all(ops, "\\a\uf03ab") == b"colon"  # "a:b" on Linux
    status, _, _ = ops.ll_open("\\Docs\\missing.txt")
    assert status == NT.STATUS_OBJECT_NAME_NOT_FOUND
    status, _, _ = ops.ll_open("\\NoSuchDir\\x.txt")
    assert status == NT.STATUS_OBJECT_PATH_NOT_FOUND
    status, _, _ = ops.ll_open("\\Docs\\Report.txt\\below-a-file")
    assert status == NT.STATUS_OBJECT_PATH_NOT_FOUND
    status, _, _ = ops.ll_open("\\Docs\\Report.txt:stream")
    assert status == NT.STATUS_OBJECT_NAME_INVALID


@needs_linux_core
def test_snapshot_file_index_is_the_snapshot_time_inode(fake: ModuleType, env: Env) -> None:
    tree(env)
    ino = os.stat(env.backing / "Docs" / "Report.txt").st_ino
    snap = env.snapshot()
    env.vol.unlink("/hardlink.txt")
    env.vol.rename("/Docs/Report.txt", "/Docs/Renamed.txt")
    put(env.vol, "/Docs/Report.txt", b"a new file under the old name")
    _, ops = snapshot_ops(fake, snap)
    _, h1, info1 = ops.ll_open("\\Docs\\Report.txt")
    _, h2, info2 = ops.ll_open("\\hardlink.txt")
    assert info1["index_number"] == info2["index_number"] == ino
    assert info1["file_size"] == len(b"original report")
    for h in (h1, h2):
        ops.ll_close(h)


@needs_linux_core
def test_snapshot_enumeration_resumes_after_markers(fake: ModuleType, env: Env) -> None:
    tree(env)
    for i in range(40):
        put(env.vol, f"/Docs/f{i:02d}-{'X' if i % 2 else 'y'}.txt", b"%d" % i)
    snap = env.snapshot()
    _, ops = snapshot_ops(fake, snap)
    status, h, _ = ops.ll_open("\\Docs", winfsp.FILE_DIRECTORY_FILE)
    assert status == 0
    small = ops.enumerate_dir(h, length=300)  # two or three entries per call
    large = ops.enumerate_dir(h, length=1 << 20)
    names = [e["file_name"] for e in small]
    assert names == [e["file_name"] for e in large]
    assert names[:2] == [".", ".."]
    assert names[2:] == sorted(names[2:], key=wp.ntfs_sort_key)
    assert {"Report.txt", "Sub"} <= set(names) and len(names) == 2 + 42
    sub = next(e for e in small if e["file_name"] == "Sub")
    assert sub["file_attributes"] == wp.FILE_ATTRIBUTE_DIRECTORY
    ops.ll_close(h)

    status, root, _ = ops.ll_open("\\")
    top = [e["file_name"] for e in ops.enumerate_dir(root, length=400)]
    assert "." not in top and ".." not in top  # winfspy: only below the root
    assert "a\uf03ab" in top
    link = next(e for e in ops.enumerate_dir(root) if e["file_name"] == "to-report")
    assert link["file_attributes"] & wp.FILE_ATTRIBUTE_REPARSE_POINT
    assert link["reparse_tag"] == wp.IO_REPARSE_TAG_SYMLINK
    ops.ll_close(root)


@needs_linux_core
def test_enumeration_stats_only_what_fits(
    fake: ModuleType, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(300):
        put(env.vol, f"/f{i:03d}", b"")
    _, ops = snapshot_ops(fake, env.snapshot())
    calls = []
    real = ops.snapshot.getattr
    monkeypatch.setattr(ops.snapshot, "getattr", lambda p: (calls.append(p), real(p))[1])
    _, h, _ = ops.ll_open("\\")
    calls.clear()
    status, got, ended = ops.ll_read_directory(h, None, 1200)  # about ten entries
    assert status == 0 and not ended and 5 < len(got) < 20
    assert len(calls) <= len(got) + 1
    status, more, _ = ops.ll_read_directory(h, got[-1]["file_name"], 1200)
    assert more[0]["file_name"] == f"f{len(got):03d}"
    # a marker that no longer exists still places the continuation by order
    status, after, _ = ops.ll_read_directory(h, "f004-gone", 1200)
    assert after[0]["file_name"] == "f005"
    ops.ll_close(h)


@needs_linux_core
def test_snapshot_dir_info_by_name(fake: ModuleType, env: Env) -> None:
    tree(env)
    _, ops = snapshot_ops(fake, env.snapshot())
    _, h, _ = ops.ll_open("\\Docs")
    status, info = ops.ll_get_dir_info_by_name(h, "REPORT.TXT")
    assert status == 0 and info["file_size"] == len(b"original report")
    status, _ = ops.ll_get_dir_info_by_name(h, "nope")
    assert status == NT.STATUS_OBJECT_NAME_NOT_FOUND
    ops.ll_close(h)


@needs_linux_core
def test_every_change_is_media_write_protected(fake: ModuleType, env: Env) -> None:
    tree(env)
    snap = env.snapshot()
    handle, ops = snapshot_ops(fake, snap)
    assert handle.file_system.set_delete_available
    wpro = NT.STATUS_MEDIA_WRITE_PROTECTED
    status, h, _ = ops.ll_open("\\Docs\\Report.txt", 0, WRITE_ACCESS)
    assert status == 0  # opening is allowed, as on NTFS read-only media; changing is not
    assert ops.ll_create("\\x.txt", 0, WRITE_ACCESS, 0, None)[0] == wpro
    assert ops.ll_create("\\newdir", winfsp.FILE_DIRECTORY_FILE, WRITE_ACCESS, 0, None)[0] == wpro
    assert ops.ll_overwrite(h, 0, True)[0] == wpro
    assert ops.ll_write(h, b"x", 0)[0] == wpro
    assert ops.ll_write(h, b"x", 0, to_end=True)[0] == wpro
    assert ops.ll_set_basic_info(h, wp.FILE_ATTRIBUTE_READONLY)[0] == wpro
    assert ops.ll_set_file_size(h, 0)[0] == wpro
    assert ops.delete_request(h, "\\Docs\\Report.txt") == wpro
    assert ops.ll_can_delete(h, "\\Docs\\Report.txt") == wpro
    assert ops.ll_set_delete(h, "\\Docs\\Report.txt", False) == 0  # un-deleting changes nothing
    assert ops.ll_rename(h, "\\Docs\\Report.txt", "\\r.txt", True) == wpro
    assert ops.ll_set_security(h, wp.DACL_SECURITY_INFORMATION, wp.sddl_to_bytes(SDDL_B)) == wpro
    assert (
        ops.ll_set_reparse_point(h, "\\Docs\\Report.txt", wp.symlink_reparse_data("x", windows=False)) == wpro
    )
    assert ops.ll_set_volume_label("new") == wpro
    assert ops.ll_open("\\Docs\\Report.txt", winfsp.FILE_DELETE_ON_CLOSE, WRITE_ACCESS)[0] == wpro
    assert ops.ll_flush(h) == 0
    ops.ll_cleanup(h, None, winfsp.CLEANUP_SET_LAST_WRITE_TIME | winfsp.CLEANUP_SET_ARCHIVE_BIT)
    ops.ll_close(h)
    assert (env.backing / "Docs" / "Report.txt").read_bytes() == b"original report"
    assert ops.unhandled == []


@needs_linux_core
def test_snapshot_security_descriptors_are_as_at_snapshot_time(fake: ModuleType, env: Env) -> None:
    tree(env)
    snap = env.snapshot()
    env.vol.setxattr("/Docs/Report.txt", TEST_SD_XATTR, wp.sddl_to_bytes(SDDL_B))
    _, ops = snapshot_ops(fake, snap)
    status, _, sd = ops.ll_get_security_by_name("\\Docs\\Report.txt")
    assert status == 0 and wp.bytes_to_sddl(sd) == SDDL_A
    _, h, _ = ops.ll_open("\\Docs\\Report.txt")
    assert wp.bytes_to_sddl(ops.ll_get_security(h)[1]) == SDDL_A
    assert ops.ll_get_security(h, size=10)[0] == NT.STATUS_BUFFER_OVERFLOW
    ops.ll_close(h)
    # no descriptor of its own: the documented default from the snapshot-time mode
    status, _, sd = ops.ll_get_security_by_name("\\readonly.txt")
    owner, group = wp.posix_owner_sids(os.getuid(), os.getgid())
    assert wp.bytes_to_sddl(sd) == wp.bytes_to_sddl(
        wp.default_security_descriptor(stat.S_IFREG | 0o444, os.getuid(), os.getgid())
    )
    assert f"O:{owner}G:{group}" in wp.bytes_to_sddl(sd)


@needs_linux_core
def test_a_garbled_descriptor_falls_back_to_the_default(
    fake: ModuleType, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    put(env.vol, "/f", b"")
    env.vol.setxattr("/f", TEST_SD_XATTR, b"\x01\x00garbage")
    _, ops = snapshot_ops(fake, env.snapshot())
    caplog.set_level(logging.WARNING, logger="mount.winfsp")
    status, _, sd = ops.ll_get_security_by_name("\\f")
    assert status == 0 and wp.SecurityDescriptor.from_bytes(sd).owner == f"S-1-22-1-{os.getuid()}"
    assert "no valid security descriptor" in caplog.text


@needs_linux_core
def test_snapshot_symlinks_are_reparse_points(fake: ModuleType, env: Env) -> None:
    tree(env)
    env.vol.symlink("/etc/passwd", "/abs-link")
    _, ops = snapshot_ops(fake, env.snapshot(), "W:")
    status, fa, _ = ops.ll_get_security_by_name("\\to-report")
    assert status == 0 and fa & wp.FILE_ATTRIBUTE_REPARSE_POINT
    # FILE_OPEN_REPARSE_POINT: the link itself, and its reparse data
    status, h, info = ops.ll_open("\\to-report", winfsp.FILE_OPEN_REPARSE_POINT)
    assert status == 0 and info["reparse_tag"] == wp.IO_REPARSE_TAG_SYMLINK
    status, data = ops.ll_get_reparse_point(h, "\\to-report")
    assert status == 0 and wp.parse_symlink_reparse_data(data) == ("Docs\\Report.txt", True)
    assert ops.ll_get_reparse_point(h, "\\to-report", size=8)[0] == NT.STATUS_BUFFER_TOO_SMALL
    ops.ll_close(h)
    _, h, _ = ops.ll_open("\\Docs")
    assert ops.ll_get_reparse_point(h, "\\Docs")[0] == NT.STATUS_NOT_A_REPARSE_POINT
    ops.ll_close(h)
    # what WinFsp asks when a path crosses links: the whole path, resolved on the drive
    assert ops.ll_resolve_reparse_points("\\to-report") == (NT.STATUS_REPARSE, "\\??\\W:\\Docs\\Report.txt")
    assert ops.ll_resolve_reparse_points("\\TO-DOCS\\Sub\\deep.bin") == (
        NT.STATUS_REPARSE,
        "\\??\\W:\\Docs\\Sub\\deep.bin",
    )
    assert ops.ll_resolve_reparse_points("\\to-report", resolve_last=False)[1] == "\\??\\W:\\to-report"
    assert ops.ll_resolve_reparse_points("\\abs-link")[1] == "\\??\\W:\\etc\\passwd"
    assert ops.ll_resolve_reparse_points("\\to-report", size=10)[0] == NT.STATUS_REPARSE_POINT_NOT_RESOLVED
    # a link in the middle of a name makes GetSecurityByName answer STATUS_REPARSE
    assert ops.ll_get_security_by_name("\\to-docs\\Report.txt")[0] == NT.STATUS_REPARSE


@needs_linux_core
def test_snapshot_links_in_a_loop(fake: ModuleType, env: Env) -> None:
    env.vol.symlink("b", "/a")
    env.vol.symlink("a", "/b")
    _, ops = snapshot_ops(fake, env.snapshot())
    assert ops.ll_resolve_reparse_points("\\a")[0] == NT.STATUS_REPARSE_POINT_NOT_RESOLVED


@needs_linux_core
def test_undecodable_names_are_left_out_of_listings(
    fake: ModuleType, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    (env.backing / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    put(env.vol, "/ok", b"")
    _, ops = snapshot_ops(fake, env.snapshot())
    caplog.set_level(logging.WARNING, logger="mount.winfsp")
    _, h, _ = ops.ll_open("\\")
    names = [e["file_name"] for e in ops.enumerate_dir(h)]
    assert names == ["ok"]
    assert "not valid Unicode" in caplog.text
    assert ops.unhandled == []
    ops.ll_close(h)


@needs_linux_core
def test_volume_info_and_label(fake: ModuleType, env: Env) -> None:
    snap = env.snapshot()
    _, ops = snapshot_ops(fake, snap)
    status, vi = ops.ll_get_volume_info()
    assert status == 0
    assert vi["volume_label"] == winfsp.snapshot_label("data", snap.created_ns)
    assert vi["total_size"] > 0 and 0 <= vi["free_size"] <= vi["total_size"]


@needs_linux_core
def test_an_invalid_snapshot_reads_as_unexpected_io_error(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/f", b"data")
    snap = env.snapshot()
    _, ops = snapshot_ops(fake, snap)
    status, h, _ = ops.ll_open("\\f")
    assert status == 0
    snap.invalidate("test: cache volume full")
    assert ops.ll_read(h, 0, 4)[0] == NT.STATUS_UNEXPECTED_IO_ERROR
    assert ops.ll_open("\\f")[0] == NT.STATUS_UNEXPECTED_IO_ERROR
    ops.ll_close(h)


@needs_linux_core
def test_bugs_are_caught_before_winfspys_catch_all(
    fake: ModuleType, env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    put(env.vol, "/f", b"data")
    _, ops = snapshot_ops(fake, env.snapshot())
    _, h, _ = ops.ll_open("\\f")

    def broken(*args: Any) -> bytes:
        raise KeyError("a bug")

    monkeypatch.setattr(ops.snapshot, "read", broken)
    caplog.set_level(logging.ERROR, logger="mount.winfsp")
    assert ops.ll_read(h, 0, 4)[0] == NT.STATUS_UNEXPECTED_IO_ERROR
    assert ops.unhandled == []  # winfspy's own catch-all never saw it
    assert "read: unexpected KeyError" in caplog.text
    ops.ll_close(h)


@needs_linux_core
def test_close_releases_everything(fake: ModuleType, env: Env) -> None:
    tree(env)
    snap = env.snapshot()
    _, ops = snapshot_ops(fake, snap)
    handles = [ops.ll_open(n)[1] for n in ("\\Docs\\Report.txt", "\\big.dat", "\\Docs", "\\to-report")]
    assert len(ops.open_files()) == 4 and len(snap._files) == 2
    for h in handles:
        ops.ll_cleanup(h, None, 0)
        ops.ll_close(h)
    assert ops.open_files() == [] and snap._files == {} and ops._opened_objs == {}


# ================================================================ mount targets


@needs_linux_core
def test_mount_targets(fake: ModuleType, env: Env, tmp_path: Path) -> None:
    snap = env.snapshot()
    a = winfsp.mount_snapshot_drive(snap, None, taken={"V:", "U:"})
    assert a.mountpoint == "T:"
    with pytest.raises(UsageError, match="T: is already in use"):
        winfsp.mount_snapshot_drive(snap, "t", taken={"T:"})
    with pytest.raises(UsageError, match="already mounts"):
        winfsp.mount_snapshot_drive(snap, "T:", taken=set())
    b = winfsp.mount_snapshot(snap, "")  # the daemon's entry point, no letter: the first free one
    assert b.mountpoint != "T:"
    assert {m.mountpoint for m in winfsp.active_mounts()} >= {"T:", b.mountpoint}
    for m in (a, b):
        m.unmount()
    with pytest.raises(MountError, match="over itself"):
        winfsp.mount_live(env.vol, "L:", over=True)


@needs_linux_core
def test_directory_mount_targets(fake: ModuleType, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = env.snapshot()
    monkeypatch.setattr(winfsp.os.path, "lexists", lambda p: p == "C:\\mnt\\exists")
    monkeypatch.setattr(winfsp.os.path, "isdir", lambda p: p == "C:\\mnt")
    m = winfsp.mount_snapshot_drive(snap, "C:\\mnt\\snap")
    assert m.mountpoint == "C:\\mnt\\snap"
    assert m.file_system.volume_params["reject_irp_prior_to_transact0"] == 1
    assert m.operations._mount_prefix() == "\\??\\C:\\mnt\\snap"
    m.unmount()
    with pytest.raises(UsageError, match="exists"):
        winfsp.mount_snapshot_drive(snap, "C:\\mnt\\exists")
    with pytest.raises(UsageError, match="parent directory"):
        winfsp.mount_snapshot_drive(snap, "C:\\nowhere\\snap")


@needs_linux_core
def test_a_failed_start_is_a_mount_error(fake: ModuleType, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = env.snapshot()
    real = fake.FileSystem

    class Failing(real):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            raise fake.WinFSPyError("Cannot mount file system: STATUS_OBJECT_NAME_COLLISION")

    monkeypatch.setattr(fake, "FileSystem", Failing)
    with pytest.raises(MountError, match=r"cannot mount the snapshot .* on V:: Cannot mount"):
        winfsp.mount_snapshot_drive(snap, "V:", taken=set())
    assert winfsp.active_mounts() == []


# ================================================================ the live drive


@needs_linux_core
def test_live_create_write_read(fake: ModuleType, env: Env) -> None:
    _, ops = live_ops(fake, env)
    status, h, info = ops.ll_create(
        "\\hello.txt", 0, WRITE_ACCESS, wp.FILE_ATTRIBUTE_NORMAL, wp.sddl_to_bytes(SDDL_A)
    )
    assert status == 0 and info["file_size"] == 0
    status, n, info = ops.ll_write(h, b"hello world", 0)
    assert (status, n, info["file_size"]) == (0, 11, 11)
    assert ops.ll_read(h, 6, 100) == (0, b"world")
    assert ops.ll_read(h, 11, 10)[0] == NT.STATUS_END_OF_FILE
    ops.ll_cleanup(h, None, 0)
    ops.ll_close(h)
    assert (env.backing / "hello.txt").read_bytes() == b"hello world"
    assert wp.bytes_to_sddl(os.getxattr(env.backing / "hello.txt", TEST_SD_XATTR)) == SDDL_A
    assert ops.ll_get_security_by_name("\\HELLO.TXT")[2] == wp.sddl_to_bytes(SDDL_A)
    # a name differing only in case is the same name on Windows
    assert ops.ll_create("\\Hello.TXT", 0, WRITE_ACCESS, 0, None)[0] == NT.STATUS_OBJECT_NAME_COLLISION
    assert read_all(ops, "\\HELLO.txt") == b"hello world"


@needs_linux_core
def test_live_create_without_descriptor_support(fake: ModuleType, env: Env) -> None:
    _, ops = live_ops(fake, env)
    ops.security_xattr = winfsp.SECURITY_XATTR  # system.ntfs_acl: not on ext4/tmpfs
    status, h, _ = ops.ll_create("\\f", 0, WRITE_ACCESS, 0, wp.sddl_to_bytes(SDDL_A))
    assert status == 0  # the descriptor is dropped, the file is made
    sddl = wp.bytes_to_sddl(ops.ll_get_security(h)[1])
    assert sddl.startswith(f"O:S-1-22-1-{os.geteuid()}")
    assert (
        ops.ll_set_security(h, wp.DACL_SECURITY_INFORMATION, wp.sddl_to_bytes(SDDL_B))
        == NT.STATUS_NOT_SUPPORTED
    )
    ops.ll_close(h)


@needs_linux_core
def test_live_directories_and_deletion(fake: ModuleType, env: Env) -> None:
    _, ops = live_ops(fake, env)
    status, d, info = ops.ll_create("\\dir", winfsp.FILE_DIRECTORY_FILE, WRITE_ACCESS, 0, None)
    assert status == 0 and info["file_attributes"] == wp.FILE_ATTRIBUTE_DIRECTORY
    _, f, _ = ops.ll_create("\\dir\\f.txt", 0, WRITE_ACCESS, 0, None)
    ops.ll_cleanup(f, None, 0)
    ops.ll_close(f)
    assert ops.delete_request(d, "\\dir") == NT.STATUS_DIRECTORY_NOT_EMPTY
    assert ops.ll_can_delete(d, "\\dir") == NT.STATUS_DIRECTORY_NOT_EMPTY
    status, _, _ = ops.ll_open("\\dir", winfsp.FILE_DELETE_ON_CLOSE, wp.DELETE)
    assert status == NT.STATUS_DIRECTORY_NOT_EMPTY
    # DeleteFile of the file: open, set disposition, last cleanup deletes
    _, f, _ = ops.ll_open("\\dir\\F.TXT", 0, WRITE_ACCESS | wp.DELETE)
    assert ops.delete_request(f, "\\dir\\f.txt") == 0
    ops.ll_cleanup(f, "\\dir\\f.txt", winfsp.CLEANUP_DELETE)
    ops.ll_close(f)
    assert not (env.backing / "dir" / "f.txt").exists()
    assert ops.delete_request(d, "\\dir") == 0
    ops.ll_cleanup(d, "\\dir", winfsp.CLEANUP_DELETE)
    ops.ll_close(d)
    assert not (env.backing / "dir").exists()
    _, root, _ = ops.ll_open("\\")
    assert ops.delete_request(root, "\\") == NT.STATUS_CANNOT_DELETE
    ops.ll_close(root)


@needs_linux_core
def test_live_changes_keep_the_snapshot(fake: ModuleType, env: Env) -> None:
    """Writes through the drive pass the copy-on-write engine: the snapshot keeps the past."""
    tree(env)
    snap = env.snapshot()
    _, live = live_ops(fake, env)
    _, h, _ = live.ll_open("\\Docs\\Report.txt", 0, WRITE_ACCESS)
    assert live.ll_overwrite(h, 0, False)[1]["file_size"] == 0
    live.ll_write(h, b"rewritten", 0)
    live.ll_cleanup(h, None, 0)
    live.ll_close(h)
    _, h, _ = live.ll_open("\\big.dat", 0, WRITE_ACCESS | wp.DELETE)
    live.delete_request(h, "\\big.dat")
    live.ll_cleanup(h, "\\big.dat", winfsp.CLEANUP_DELETE)
    live.ll_close(h)
    _, h, _ = live.ll_open("\\Docs\\Report.txt")
    assert live.ll_set_security(h, wp.DACL_SECURITY_INFORMATION, wp.sddl_to_bytes("D:(A;;GA;;;WD)")) == 0
    assert wp.bytes_to_sddl(live.ll_get_security(h)[1]) == "O:BAG:SYD:(A;;FA;;;WD)"  # GA mapped to FA
    live.ll_close(h)

    _, snapshot = snapshot_ops(fake, snap)
    assert read_all(snapshot, "\\Docs\\Report.txt") == b"original report"
    assert read_all(snapshot, "\\big.dat") == b"x" * 100
    assert wp.bytes_to_sddl(snapshot.ll_get_security_by_name("\\Docs\\Report.txt")[2]) == SDDL_A
    assert read_all(live, "\\Docs\\Report.txt") == b"rewritten"
    assert live.ll_open("\\big.dat")[0] == NT.STATUS_OBJECT_NAME_NOT_FOUND


@needs_linux_core
def test_live_append_constrained_io_and_sizes(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/f", b"0123456789")
    _, ops = live_ops(fake, env)
    _, h, _ = ops.ll_open("\\f", 0, WRITE_ACCESS)
    assert ops.ll_write(h, b"AB", -1, to_end=True)[1] == 2
    assert ops.ll_write(h, b"xyz", 10, constrained=True)[1] == 2  # paging I/O never extends
    assert ops.ll_write(h, b"zz", 50, constrained=True)[1] == 0
    assert (env.backing / "f").read_bytes() == b"0123456789xy"
    assert ops.ll_set_file_size(h, 4)[1]["file_size"] == 4
    assert ops.ll_set_file_size(h, 8192, allocation=True)[1]["file_size"] == 4  # allocation only
    assert ops.ll_set_file_size(h, 2, allocation=True)[1]["file_size"] == 2  # below the size: truncates
    assert ops.ll_set_file_size(h, 6)[1]["file_size"] == 6
    assert (env.backing / "f").read_bytes() == b"01\0\0\0\0"
    assert ops.ll_flush(h) == 0 and ops.ll_flush(None) == 0
    ops.ll_close(h)


@needs_linux_core
def test_live_paging_write_through_a_read_only_open(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/f", b"abc")
    _, ops = live_ops(fake, env)
    _, h, _ = ops.ll_open("\\f", 0, READ_ACCESS)
    assert env.vol.open_for_write() == []  # a reader does not count as a writer
    assert ops.ll_write(h, b"Z", 0, constrained=True)[:2] == (0, 1)
    assert (env.backing / "f").read_bytes() == b"Zbc"
    assert ops.ll_read(h, 0, 3) == (0, b"Zbc")
    ops.ll_close(h)
    assert env.vol.open_for_write() == []


@needs_linux_core
def test_live_basic_info(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/f", b"abc")
    _, ops = live_ops(fake, env)
    _, h, _ = ops.ll_open("\\f", 0, WRITE_ACCESS)
    status, info = ops.ll_set_basic_info(h, wp.FILE_ATTRIBUTE_READONLY | wp.FILE_ATTRIBUTE_ARCHIVE)
    assert status == 0 and info["file_attributes"] & wp.FILE_ATTRIBUTE_READONLY
    assert stat.S_IMODE(os.stat(env.backing / "f").st_mode) == 0o444
    assert (
        ops.ll_set_basic_info(h, wp.INVALID_FILE_ATTRIBUTES)[1]["file_attributes"]
        & wp.FILE_ATTRIBUTE_READONLY
    )
    ops.ll_set_basic_info(h, wp.FILE_ATTRIBUTE_ARCHIVE)
    assert stat.S_IMODE(os.stat(env.backing / "f").st_mode) == 0o644
    when = 1_600_000_000 * 10**9
    atime_before = os.stat(env.backing / "f").st_atime_ns
    status, info = ops.ll_set_basic_info(h, wp.INVALID_FILE_ATTRIBUTES, 0, 0, wp.ns_to_filetime(when), 0)
    st_ = os.stat(env.backing / "f")
    assert st_.st_mtime_ns == when and st_.st_atime_ns == atime_before  # 0: unchanged
    assert info["last_write_time"] == wp.ns_to_filetime(when)
    ops.ll_close(h)


@needs_linux_core
def test_live_rename_rules(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/a.txt", b"a")
    put(env.vol, "/b.txt", b"b")
    env.vol.mkdir("/dir", 0o755)
    put(env.vol, "/dir/inner.txt", b"inner")
    _, ops = live_ops(fake, env)

    _, h, _ = ops.ll_open("\\a.txt", 0, WRITE_ACCESS | wp.DELETE)
    assert ops.ll_rename(h, "\\a.txt", "\\B.TXT", False) == NT.STATUS_OBJECT_NAME_COLLISION
    assert ops.ll_rename(h, "\\a.txt", "\\dir", True) == NT.STATUS_ACCESS_DENIED
    assert ops.ll_rename(h, "\\a.txt", "\\A.txt", False) == 0  # case only
    assert backing_names(env) == ["A.txt", "b.txt", "dir"]
    assert ops.ll_rename(h, "\\A.txt", "\\B.TXT", True) == 0  # replaces b.txt, keeps the new spelling
    assert backing_names(env) == ["B.TXT", "dir"]
    assert ops.ll_get_file_info(h)[1]["file_size"] == 1
    assert ops.ll_write(h, b"!", 1)[0] == 0
    ops.ll_close(h)
    assert (env.backing / "B.TXT").read_bytes() == b"a!"

    # open files below a renamed directory follow it
    _, inner, _ = ops.ll_open("\\dir\\inner.txt", 0, WRITE_ACCESS)
    _, d, _ = ops.ll_open("\\dir", 0, WRITE_ACCESS | wp.DELETE)
    assert ops.ll_rename(d, "\\dir", "\\moved", False) == 0
    assert ops.ll_set_basic_info(inner, wp.FILE_ATTRIBUTE_READONLY)[0] == 0
    assert stat.S_IMODE(os.stat(env.backing / "moved" / "inner.txt").st_mode) == 0o444
    assert ops.ll_rename(d, "\\moved", "\\nowhere\\x", False) == NT.STATUS_OBJECT_PATH_NOT_FOUND
    for h in (inner, d):
        ops.ll_close(h)


@needs_linux_core
def test_live_hides_and_protects_vspfs_names(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/f", b"")
    env.snapshot()
    _, ops = live_ops(fake, env)
    _, root, _ = ops.ll_open("\\")
    names = [e["file_name"] for e in ops.enumerate_dir(root)]
    assert names == ["f"]
    ops.ll_close(root)
    status, _, _ = ops.ll_create("\\.vsp-retained", winfsp.FILE_DIRECTORY_FILE, WRITE_ACCESS, 0, None)
    assert status == NT.STATUS_ACCESS_DENIED


@needs_linux_core
def test_live_symlinks_through_reparse_points(fake: ModuleType, env: Env) -> None:
    put(env.vol, "/target.txt", b"t")
    _, ops = live_ops(fake, env)
    # mklink: create an empty file, then FSCTL_SET_REPARSE_POINT on it
    _, h, _ = ops.ll_create("\\link", 0, WRITE_ACCESS, 0, None)
    data = wp.symlink_reparse_data("target.txt", windows=False)
    assert ops.ll_set_reparse_point(h, "\\link", data) == 0
    assert os.readlink(env.backing / "link") == "target.txt"
    assert ops.ll_get_file_info(h)[1]["reparse_tag"] == wp.IO_REPARSE_TAG_SYMLINK
    assert ops.ll_get_reparse_point(h, "\\link")[1] == data
    ops.ll_close(h)
    assert ops.ll_resolve_reparse_points("\\LINK") == (NT.STATUS_REPARSE, "\\??\\L:\\target.txt")
    _, h, _ = ops.ll_open("\\target.txt", 0, WRITE_ACCESS)
    assert ops.ll_set_reparse_point(h, "\\target.txt", data) == NT.STATUS_IO_REPARSE_DATA_INVALID  # not empty
    junction = wp.symlink_reparse_data("x", windows=False).replace(
        b"\x0c\x00\x00\xa0", b"\x03\x00\x00\xa0", 1
    )
    assert ops.ll_set_reparse_point(h, "\\target.txt", junction) == NT.STATUS_IO_REPARSE_TAG_NOT_HANDLED
    ops.ll_close(h)


@needs_linux_core
def test_live_volume_label_and_errors(fake: ModuleType, env: Env) -> None:
    _, ops = live_ops(fake, env)
    assert ops.ll_get_volume_info()[1]["volume_label"] == "vspfs data"
    assert ops.ll_set_volume_label("Backup Data") == 0
    assert ops.ll_get_volume_info()[1]["volume_label"] == "Backup Data"
    assert ops.ll_set_volume_label("x" * 40) == NT.STATUS_INVALID_VOLUME_LABEL
    assert ops.ll_open("\\missing")[0] == NT.STATUS_OBJECT_NAME_NOT_FOUND
    assert (
        ops.ll_create("\\no\\such\\dir.txt", 0, WRITE_ACCESS, 0, None)[0] == NT.STATUS_OBJECT_PATH_NOT_FOUND
    )
    assert ops.unhandled == []


# ================================= a Windows file's own attributes and creation time


def test_ntfs_attrib_and_crtime_values_are_ntfs_3gs() -> None:
    """4 bytes of FILE_ATTRIBUTE_* and 8 bytes of FILETIME, little-endian."""
    assert wp.encode_ntfs_attrib(0x2026) == b"\x26\x20\x00\x00"
    assert wp.decode_ntfs_attrib(b"\x26\x20\x00\x00") == 0x2026
    assert wp.decode_ntfs_attrib(b"\x26\x20") is None
    ft = 133_000_000_000_000_000
    assert wp.encode_ntfs_crtime(ft) == ft.to_bytes(8, "little")
    assert wp.decode_ntfs_crtime(ft.to_bytes(8, "little")) == ft
    assert wp.decode_ntfs_crtime(bytes(8)) is None  # 0: "not set" to Windows
    assert wp.decode_ntfs_crtime(b"\xff" * 8) is None and wp.decode_ntfs_crtime(b"\x01") is None
    assert (wp.NTFS_ATTRIB_XATTR, wp.NTFS_CRTIME_XATTR) == ("system.ntfs_attrib", "system.ntfs_crtime")
    assert wp.SETTABLE_FILE_ATTRIBUTES == 0x3127  # ntfs-3g's FILE_ATTR_SETTABLE


def test_served_attributes_agree_with_the_objects_type() -> None:
    hs = wp.FILE_ATTRIBUTE_HIDDEN | wp.FILE_ATTRIBUTE_SYSTEM
    reg, d, lnk = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777
    assert wp.served_attributes(hs | wp.FILE_ATTRIBUTE_ARCHIVE, reg) == hs | wp.FILE_ATTRIBUTE_ARCHIVE
    assert wp.served_attributes(hs, d) == hs | wp.FILE_ATTRIBUTE_DIRECTORY  # the type, not the value
    assert wp.served_attributes(wp.FILE_ATTRIBUTE_DIRECTORY, reg) == 0
    assert wp.served_attributes(wp.FILE_ATTRIBUTE_REPARSE_POINT | wp.FILE_ATTRIBUTE_DIRECTORY, d) == (
        wp.FILE_ATTRIBUTE_DIRECTORY  # a junction: shown as the directory the core reaches
    )
    assert wp.served_attributes(wp.FILE_ATTRIBUTE_ARCHIVE, lnk) == (
        wp.FILE_ATTRIBUTE_ARCHIVE | wp.FILE_ATTRIBUTE_REPARSE_POINT
    )
    never = wp.FILE_ATTRIBUTE_SPARSE_FILE | wp.FILE_ATTRIBUTE_ENCRYPTED | wp.FILE_ATTRIBUTE_NORMAL
    kept = wp.FILE_ATTRIBUTE_COMPRESSED | wp.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED | wp.FILE_ATTRIBUTE_READONLY
    assert wp.served_attributes(never | kept, reg) == kept


def test_file_info_with_the_files_own_attributes_and_creation_time() -> None:
    a = attr(stat.S_IFREG | 0o644)
    info = winfsp.file_info(
        a, wp.FILE_ATTRIBUTE_HIDDEN | wp.FILE_ATTRIBUTE_SPARSE_FILE, 125_000_000_000_000_000
    )
    assert info["file_attributes"] == wp.FILE_ATTRIBUTE_HIDDEN  # never SPARSE_FILE
    assert info["creation_time"] == 125_000_000_000_000_000
    assert {k: v for k, v in info.items() if k not in ("file_attributes", "creation_time")} == {
        k: v for k, v in winfsp.file_info(a).items() if k not in ("file_attributes", "creation_time")
    }


class WindowsStandIn:
    """What Windows keeps per file and Linux does not, per inode: the
    attributes word and the creation time, behind the three calls the Windows
    xattrs use (``stat`` as ``os.stat`` answers there, ``set_attributes``
    and ``set_creation_time`` as Win32Files does them), plus a security
    descriptor. As on Windows, READONLY of a file is its mode's write bits
    (both ways), a new file is ARCHIVE, and the creation time is fixed when
    a file is first seen."""

    SD = wp.sddl_to_bytes("O:BAG:SYD:P(A;;FA;;;SY)(A;;FA;;;WD)")

    def __init__(self) -> None:
        self.attributes: dict[tuple[int, int], int] = {}  # settable bits set, READONLY aside for files
        self.birth_ns: dict[tuple[int, int], int] = {}
        self.sds: dict[tuple[int, int], bytes] = {}
        self.calls: list[str] = []

    @staticmethod
    def _key(path: str) -> tuple[tuple[int, int], os.stat_result]:
        st = os.lstat(path)
        return (st.st_dev, st.st_ino), st

    def stat(self, path: str) -> SimpleNamespace:
        self.calls.append("stat")
        key, st = self._key(path)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            attrs = self.attributes.get(key, 0) | wp.FILE_ATTRIBUTE_DIRECTORY
        else:
            attrs = self.attributes.get(key, wp.FILE_ATTRIBUTE_ARCHIVE) & ~wp.FILE_ATTRIBUTE_READONLY
            attrs |= 0 if mode & stat.S_IWUSR else wp.FILE_ATTRIBUTE_READONLY
            attrs |= wp.FILE_ATTRIBUTE_REPARSE_POINT if stat.S_ISLNK(mode) else 0
        born = self.birth_ns.setdefault(key, st.st_ctime_ns)
        return SimpleNamespace(
            st_mode=mode,
            st_file_attributes=attrs or wp.FILE_ATTRIBUTE_NORMAL,
            st_birthtime_ns=born,
            st_ctime_ns=st.st_ctime_ns,
        )

    def set_attributes(self, path: str, attributes: int) -> None:
        self.calls.append("set_attributes")
        key, st = self._key(path)
        value = attributes & wp.SETTABLE_FILE_ATTRIBUTES  # what SetFileAttributesW changes
        self.attributes[key] = value
        if not stat.S_ISDIR(st.st_mode):
            readonly = bool(value & wp.FILE_ATTRIBUTE_READONLY)
            os.chmod(path, wp.mode_with_readonly(st.st_mode, readonly))

    def set_creation_time(self, path: str, filetime: int) -> None:
        self.calls.append("set_creation_time")
        self.birth_ns[self._key(path)[0]] = wp.filetime_to_ns(filetime)

    def get_security(self, path: str, info: int) -> bytes:
        self.calls.append("get_security")
        return self.sds.get(self._key(path)[0], self.SD)

    def set_security(self, path: str, info: int, sd: bytes) -> None:
        self.calls.append("set_security")
        self.sds[self._key(path)[0]] = sd

    def xattrs(self) -> Any:
        from vspfs import hostfs

        return hostfs.WindowsXattrs(
            get_security=self.get_security,
            set_security=self.set_security,
            set_attributes=self.set_attributes,
            set_creation_time=self.set_creation_time,
            stat=self.stat,
        )


@dataclass
class NtfsEnv(Env):
    windows: WindowsStandIn


@pytest.fixture
def ntfs_env(tmp_path: Path) -> Iterator[NtfsEnv]:
    """A volume whose backing "has" Windows' attributes and creation times:
    the engine runs over the by-path host filesystem binding (Windows' own
    code), with Linux's answers to its primitives and hostfs's Windows
    xattrs (the real class) over :class:`WindowsStandIn`."""
    if ON_WINDOWS:
        pytest.skip("the core (vspfs.volume) is Linux-only for now")
    from vspfs import hostfs
    from vspfs.provider import Provider

    windows = WindowsStandIn()
    base = hostfs.linux_path_calls()
    calls = hostfs.PathCalls(
        access_path=hostfs._posix_location,
        open_file=base._open_file,
        open_directory=base._open_directory,
        rename=base._rename,
        sep="/",
        xattrs=windows.xattrs(),
    )
    previous = hostfs.use(calls)
    try:
        backing = tmp_path / "data"
        backing.mkdir()
        provider = Provider(str(tmp_path / "state"))
        try:
            yield NtfsEnv(provider, provider.add_volume(str(backing), chunk_size=16), backing, windows)
        finally:
            provider.close()
    finally:
        hostfs.use(previous)


def windows_live(fake: ModuleType, env: Env) -> Any:
    """The live drive, with descriptors in ``system.ntfs_acl`` as on Windows."""
    _, live = live_ops(fake, env)
    live.security_xattr = winfsp.SECURITY_XATTR
    return live


def windows_virtual(fake: ModuleType, snap: Any) -> Any:
    """A virtual drive, with descriptors in ``system.ntfs_acl`` as on Windows."""
    _, virtual = snapshot_ops(fake, snap)
    virtual.security_xattr = winfsp.SECURITY_XATTR
    return virtual


HIDDEN_SYSTEM = wp.FILE_ATTRIBUTE_HIDDEN | wp.FILE_ATTRIBUTE_SYSTEM
T1 = 130_000_000_000_000_000  # FILETIMEs: 2012-12-18 and 2021-06-18
T2 = 132_685_000_000_000_000


@needs_linux_core
def test_a_snapshot_keeps_a_files_windows_attributes_and_creation_time(
    fake: ModuleType, ntfs_env: NtfsEnv
) -> None:
    env = ntfs_env
    live = windows_live(fake, env)
    assert live.has_windows_metadata()
    status, h, info = live.ll_create("\\secret.txt", 0, WRITE_ACCESS, HIDDEN_SYSTEM, None)
    assert status == 0 and info["file_attributes"] == HIDDEN_SYSTEM | wp.FILE_ATTRIBUTE_ARCHIVE
    status, info = live.ll_set_basic_info(h, wp.INVALID_FILE_ATTRIBUTES, T1)
    assert status == 0 and info["creation_time"] == T1
    live.ll_write(h, b"hidden data", 0)
    live.ll_cleanup(h, None, 0)
    live.ll_close(h)
    status, d, info = live.ll_create(
        "\\Folder", winfsp.FILE_DIRECTORY_FILE, WRITE_ACCESS, wp.FILE_ATTRIBUTE_HIDDEN, None
    )
    assert status == 0 and info["file_attributes"] == wp.FILE_ATTRIBUTE_DIRECTORY | wp.FILE_ATTRIBUTE_HIDDEN
    live.ll_close(d)
    put(env.vol, "/untouched.txt", b"u")
    _, u, _ = live.ll_open("\\untouched.txt", 0, WRITE_ACCESS)
    status, info = live.ll_set_basic_info(u, wp.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED, T2)
    assert info["file_attributes"] == wp.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED and info["creation_time"] == T2
    live.ll_close(u)

    snap = env.snapshot()

    # then, through the live drive: every attribute cleared (WinFsp sends 0 for
    # SetFileAttributes(NORMAL) on a file), a new creation time, READONLY on
    _, h, _ = live.ll_open("\\SECRET.TXT", 0, WRITE_ACCESS)
    status, info = live.ll_set_basic_info(h, 0, T2)
    assert status == 0 and (info["file_attributes"], info["creation_time"]) == (0, T2)
    status, info = live.ll_set_basic_info(h, wp.FILE_ATTRIBUTE_READONLY)
    assert info["file_attributes"] == wp.FILE_ATTRIBUTE_READONLY
    assert stat.S_IMODE(os.stat(env.backing / "secret.txt").st_mode) & 0o222 == 0  # Windows' one bit
    live.ll_close(h)
    _, d, _ = live.ll_open("\\Folder", winfsp.FILE_DIRECTORY_FILE)
    assert live.ll_set_basic_info(d, wp.FILE_ATTRIBUTE_DIRECTORY)[1]["file_attributes"] == (
        wp.FILE_ATTRIBUTE_DIRECTORY
    )
    live.ll_close(d)

    virtual = windows_virtual(fake, snap)
    assert virtual.has_windows_metadata()
    status, h, info = virtual.ll_open("\\secret.txt")
    assert status == 0
    assert info["file_attributes"] == HIDDEN_SYSTEM | wp.FILE_ATTRIBUTE_ARCHIVE
    assert info["creation_time"] == T1
    assert virtual.ll_get_file_info(h)[1] == info
    virtual.ll_close(h)
    assert virtual.ll_get_security_by_name("\\secret.txt")[1] == HIDDEN_SYSTEM | wp.FILE_ATTRIBUTE_ARCHIVE
    _, root, _ = virtual.ll_open("\\")
    listed = {e["file_name"]: e for e in virtual.enumerate_dir(root)}
    assert (listed["secret.txt"]["file_attributes"], listed["secret.txt"]["creation_time"]) == (
        HIDDEN_SYSTEM | wp.FILE_ATTRIBUTE_ARCHIVE,
        T1,
    )
    assert listed["Folder"]["file_attributes"] == wp.FILE_ATTRIBUTE_DIRECTORY | wp.FILE_ATTRIBUTE_HIDDEN
    # unchanged since the snapshot: read live, one name at a time
    assert listed["untouched.txt"]["file_attributes"] == wp.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED
    assert listed["untouched.txt"]["creation_time"] == T2
    assert virtual.ll_get_dir_info_by_name(root, "SECRET.TXT")[1]["creation_time"] == T1
    virtual.ll_close(root)
    assert read_all(virtual, "\\secret.txt") == b"hidden data"
    # the live drive shows what the file is now
    _, h, info = live.ll_open("\\secret.txt")
    assert (info["file_attributes"], info["creation_time"]) == (wp.FILE_ATTRIBUTE_READONLY, T2)
    live.ll_close(h)


@needs_linux_core
def test_describing_a_file_reads_no_security_descriptor(fake: ModuleType, ntfs_env: NtfsEnv) -> None:
    """File info is asked all the time: on a virtual drive it reads the one
    xattr it needs from an unchanged file, never the descriptor with it."""
    env = ntfs_env
    for i in range(5):
        put(env.vol, f"/f{i}", b"x")
    virtual = windows_virtual(fake, env.snapshot())
    assert virtual.has_windows_metadata()  # decided once per drive (reads the root's xattrs)
    env.windows.calls.clear()
    _, root, _ = virtual.ll_open("\\")
    assert len(virtual.enumerate_dir(root)) == 5
    _, h, _ = virtual.ll_open("\\f3")
    virtual.ll_get_file_info(h)
    virtual.ll_close(h)
    virtual.ll_close(root)
    assert "get_security" not in env.windows.calls and "stat" in env.windows.calls


@needs_linux_core
def test_overwrite_and_create_attributes_on_a_windows_backing(fake: ModuleType, ntfs_env: NtfsEnv) -> None:
    env = ntfs_env
    live = windows_live(fake, env)
    _, h, info = live.ll_create(
        "\\t.tmp", 0, WRITE_ACCESS, wp.FILE_ATTRIBUTE_TEMPORARY | wp.FILE_ATTRIBUTE_NORMAL, None
    )
    assert info["file_attributes"] == wp.FILE_ATTRIBUTE_TEMPORARY | wp.FILE_ATTRIBUTE_ARCHIVE
    live.ll_write(h, b"data", 0)
    # FILE_OVERWRITE adds, FILE_SUPERSEDE replaces (and sets ARCHIVE), as NTFS does
    status, info = live.ll_overwrite(h, wp.FILE_ATTRIBUTE_HIDDEN, False)
    assert status == 0 and info["file_size"] == 0
    assert info["file_attributes"] == (
        wp.FILE_ATTRIBUTE_TEMPORARY | wp.FILE_ATTRIBUTE_ARCHIVE | wp.FILE_ATTRIBUTE_HIDDEN
    )
    assert live.ll_overwrite(h, wp.FILE_ATTRIBUTE_SYSTEM, True)[1]["file_attributes"] == (
        wp.FILE_ATTRIBUTE_SYSTEM | wp.FILE_ATTRIBUTE_ARCHIVE
    )
    live.ll_close(h)
    # nothing written when nothing changes
    _, h, _ = live.ll_open("\\t.tmp", 0, WRITE_ACCESS)
    env.windows.calls.clear()
    live.ll_set_basic_info(h, wp.FILE_ATTRIBUTE_SYSTEM | wp.FILE_ATTRIBUTE_ARCHIVE)
    assert "set_attributes" not in env.windows.calls
    live.ll_close(h)


@needs_linux_core
def test_a_linux_hosted_volume_shows_attributes_from_modes(
    fake: ModuleType, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No system.ntfs_attrib at the root: nothing changes, and no xattr is
    read to describe a file."""
    put(env.vol, "/f", b"abc", 0o444)
    env.vol.mkdir("/d", 0o755)
    snap = env.snapshot()
    live, virtual = windows_live(fake, env), windows_virtual(fake, snap)
    asked: list[str] = []
    real = snap.getxattr
    monkeypatch.setattr(snap, "getxattr", lambda p, n: (asked.append(n), real(p, n))[1])
    assert not virtual.has_windows_metadata() and not live.has_windows_metadata()
    _, root, _ = virtual.ll_open("\\")
    listed = {e["file_name"]: e for e in virtual.enumerate_dir(root)}
    virtual.ll_close(root)
    assert listed["f"]["file_attributes"] == wp.FILE_ATTRIBUTE_ARCHIVE | wp.FILE_ATTRIBUTE_READONLY
    assert listed["d"]["file_attributes"] == wp.FILE_ATTRIBUTE_DIRECTORY
    a = snap.getattr("/f")
    assert {k: listed["f"][k] for k in winfsp.file_info(a)} == winfsp.file_info(a)
    assert asked == []
    # the live drive: READONLY is the mode, HIDDEN and the creation time have no place
    _, h, _ = live.ll_open("\\f", 0, WRITE_ACCESS)
    status, info = live.ll_set_basic_info(h, wp.FILE_ATTRIBUTE_HIDDEN | wp.FILE_ATTRIBUTE_ARCHIVE, T1)
    assert status == 0 and info["file_attributes"] == wp.FILE_ATTRIBUTE_ARCHIVE
    assert info["creation_time"] != T1
    assert stat.S_IMODE(os.stat(env.backing / "f").st_mode) == 0o644
    live.ll_close(h)
    status, h, info = live.ll_create("\\g", 0, WRITE_ACCESS, HIDDEN_SYSTEM, None)
    assert status == 0 and info["file_attributes"] == wp.FILE_ATTRIBUTE_ARCHIVE
    live.ll_close(h)
    assert not [n for n in os.listxattr(env.backing / "g") if n.startswith("system.ntfs")]


# ====================================================== on Windows, with WinFsp

needs_winfsp = pytest.mark.skipif(not ON_WINDOWS, reason="needs Windows with WinFsp and winfspy")


class _MemorySnapshot:
    """A snapshot stand-in served from memory: the core itself does not run on Windows yet."""

    def __init__(self) -> None:
        self.id = "20240601T120000-win001"
        self.created_ns = 1717243200 * 10**9
        self.volume = SimpleNamespace(name="memory")
        now = time.time_ns()
        d = stat.S_IFDIR | 0o755
        f = stat.S_IFREG | 0o644
        self.files = {"/": (d, b""), "/dir": (d, b""), "/dir/hello.txt": (f, b"hello from a snapshot\n")}
        self._attrs = {
            p: Attr(m, i + 100, 1, 0, 0, 0, len(data), 0, 4096, now, now, now)
            for i, (p, (m, data)) in enumerate(self.files.items())
        }
        self._open: dict[int, bytes] = {}

    def getattr(self, path: str) -> Attr:
        key = "/" + path.strip("/")
        if key not in self._attrs:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return self._attrs[key]

    def readdir(self, path: str) -> list[tuple[str, int, int]]:
        key = "/" + path.strip("/")
        prefix = key.rstrip("/") + "/"
        out = []
        for p, a in self._attrs.items():
            if p != key and p.startswith(prefix) and "/" not in p[len(prefix) :]:
                out.append((p[len(prefix) :], a.ino, stat.S_IFMT(a.mode)))
        return out

    def readlink(self, path: str) -> str:
        raise OSError(errno.EINVAL, "not a link", path)

    def getxattr(self, path: str, name: str) -> bytes:
        raise OSError(errno.ENODATA, "no data", path)

    def listxattr(self, path: str) -> list[str]:
        return []  # no system.ntfs_attrib: attributes from the modes

    def open(self, path: str) -> int:
        fh = len(self._open) + 1
        self._open[fh] = self.files["/" + path.strip("/")][1]
        return fh

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return self._open[fh][offset : offset + size]

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    def statfs(self) -> Any:
        return SimpleNamespace(f_blocks=1000, f_frsize=4096, f_bavail=500)


@needs_winfsp
def test_real_winfsp_serves_a_read_only_drive() -> None:
    """The adapter against real WinFsp: a drive letter, its label, reads, refused writes."""
    import ctypes

    snap = _MemorySnapshot()
    handle = winfsp.mount_snapshot_drive(snap)  # type: ignore[arg-type]
    try:
        root = handle.mountpoint + "\\"
        assert os.listdir(root) == ["dir"]
        with open(os.path.join(root, "dir", "HELLO.TXT"), "rb") as f:  # case-insensitive
            assert f.read() == b"hello from a snapshot\n"
        st_ = os.stat(os.path.join(root, "dir", "hello.txt"))
        assert st_.st_ino == snap.getattr("/dir/hello.txt").ino
        label = ctypes.create_unicode_buffer(64)
        flags = ctypes.c_uint32()
        ok = ctypes.windll.kernel32.GetVolumeInformationW(  # type: ignore[attr-defined]
            root, label, 64, None, None, ctypes.byref(flags), None, 0
        )
        assert ok and label.value == winfsp.snapshot_label("memory", snap.created_ns)
        assert flags.value & 0x00080000  # FILE_READ_ONLY_VOLUME
        with pytest.raises(OSError), open(os.path.join(root, "dir", "new.txt"), "wb") as f:
            f.write(b"refused")
        with pytest.raises(OSError):
            os.remove(os.path.join(root, "dir", "hello.txt"))
    finally:
        handle.unmount()
    assert not os.path.exists(handle.mountpoint + "\\")
