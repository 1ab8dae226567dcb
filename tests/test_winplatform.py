"""The Windows platform layer (vspfs/winplatform.py), tested on any platform.

Windows cannot run where vspfs is developed, so every Windows fact the
adapter relies on is a pure function checked here against values that come
from outside this code: Windows SDK constants, winfspy's own doctest values
(FILETIME), well-known SIDs and their binary form, the documented layout of
self-relative security descriptors and of REPARSE_DATA_BUFFER.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vspfs import winplatform as wp
from vspfs.errors import UsageError

# ----------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "CON",
        "con",
        "Con.txt",
        "PRN",
        "AUX",
        "NUL",
        "nul.tar.gz",
        "COM1",
        "com9.log",
        "LPT1",
        "lpt9",
        "COM1 .x",
    ],
)
def test_reserved_device_names(name: str) -> None:
    assert wp.is_reserved_name(name)
    assert "reserved" in (wp.windows_name_problem(name) or "")


@pytest.mark.parametrize("name", ["CONSOLE", "COM0", "COM10", "LPT", "NULL", "acon", "con_", "xCON.txt"])
def test_names_that_only_look_reserved(name: str) -> None:
    assert not wp.is_reserved_name(name)


def test_superscript_com_and_lpt_are_reserved_too() -> None:
    assert wp.is_reserved_name("COM\u00b9") and wp.is_reserved_name("lpt\u00b3.txt")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a:b", "forbids"),
        ("a\\b", "forbids"),
        ("a*", "forbids"),
        ("tab\there", "forbids"),
        ("dot.", "ends with"),
        ("space ", "ends with"),
        ("", "empty"),
        ("..", "dot names"),
        ("x" * 256, "longer than 255"),
    ],
)
def test_windows_name_problems(name: str, why: str) -> None:
    assert why in (wp.windows_name_problem(name) or "")


def test_plain_names_have_no_problem() -> None:
    assert wp.windows_name_problem("report 2024.pdf") is None
    assert wp.windows_name_problem("x" * 255) is None
    assert wp.windows_name_problem("\U0001f600" * 127) is None  # 254 UTF-16 code units


def test_utf16_length_counts_surrogate_pairs() -> None:
    assert wp.utf16_len("ab") == 2
    assert wp.utf16_len("\U0001f600") == 2


def test_forbidden_characters_map_to_private_use_and_back() -> None:
    assert wp.encode_name('a:b*c?"<>|\\') == "a\uf03ab\uf02ac\uf03f\uf022\uf03c\uf03e\uf07c\uf05c"
    assert wp.encode_name("plain") == "plain"
    assert wp.decode_name(wp.encode_name("x:\x01y")) == "x:\x01y"
    # a private-use character that does not stand for a forbidden one stays
    assert wp.decode_name("\uf041") == "\uf041"


_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda s: "/" not in s and "\x00" not in s
)


@given(_names)
def test_encode_decode_round_trip(name: str) -> None:
    encoded = wp.encode_name(name)
    assert not any(c in wp.INVALID_NAME_CHARS for c in encoded)
    if not any(0xF001 <= ord(c) <= 0xF07F for c in name):
        assert wp.decode_name(encoded) == name


def test_undecodable_linux_names_are_not_utf16() -> None:
    assert wp.is_utf16_encodable("caf\u00e9")
    assert not wp.is_utf16_encodable(b"caf\xe9".decode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(
    ("windows", "core"),
    [("\\", "/"), ("", "/"), ("\\a", "/a"), ("\\a\\b\\c.txt", "/a/b/c.txt"), ("\\a\uf03ab", "/a:b")],
)
def test_winfsp_names_to_core_paths(windows: str, core: str) -> None:
    assert wp.to_core_path(windows) == core
    if windows:
        assert wp.to_windows_path(core) == (windows or "\\")


@pytest.mark.parametrize("name", ["\\..\\x", "\\a\\.\\b", "\\a\\..", "\\.."])
def test_dot_components_never_reach_the_core(name: str) -> None:
    with pytest.raises(ValueError, match="dot components"):
        wp.to_core_path(name)


def test_an_encoded_slash_never_becomes_a_separator() -> None:
    assert wp.decode_name("a\uf02fb") == "a\uf02fb"
    assert wp.to_core_path("\\..\uf02f..\uf02fetc") == "/..\uf02f..\uf02fetc"
    assert wp.decode_name("a\uf05cb") == "a\\b"  # a backslash is a Linux name character


def test_named_streams_are_refused() -> None:
    with pytest.raises(ValueError, match="named streams"):
        wp.to_core_path("\\file.txt:Zone.Identifier")


# ----------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("text", "kind", "anchor", "parts"),
    [
        ("D:\\data", "drive", "D:", ("data",)),
        ("d:/data//x/", "drive", "D:", ("data", "x")),
        ("D:\\", "drive", "D:", ()),
        ("D:\\a\\..\\..\\b\\.\\c", "drive", "D:", ("b", "c")),
        ("\\\\server\\share\\dir", "unc", "\\\\server\\share", ("dir",)),
        ("\\\\?\\D:\\very\\long", "drive", "D:", ("very", "long")),
        ("\\\\?\\UNC\\server\\share\\x", "unc", "\\\\server\\share", ("x",)),
        ("\\??\\C:\\x", "drive", "C:", ("x",)),
        ("\\\\.\\pipe\\vspfs-me", "device", "\\\\.\\pipe", ("vspfs-me",)),
        ("\\\\?\\Volume{1234}\\x", "device", "\\\\?\\Volume{1234}", ("x",)),
        ("\\rooted\\x", "rooted", "", ("rooted", "x")),
        ("..\\up", "relative", "", ("..", "up")),
    ],
)
def test_parse_windows_paths(text: str, kind: str, anchor: str, parts: tuple[str, ...]) -> None:
    p = wp.parse_windows_path(text)
    assert (p.kind, p.anchor, p.parts) == (kind, anchor, parts)


def test_windows_paths_print_back() -> None:
    assert str(wp.parse_windows_path("d:/a/b")) == "D:\\a\\b"
    assert str(wp.parse_windows_path("\\\\?\\UNC\\srv\\sh\\x")) == "\\\\srv\\sh\\x"
    assert str(wp.parse_windows_path("\\\\.\\pipe\\p")) == "\\\\.\\pipe\\p"


@pytest.mark.parametrize("text", ["", "D:data", "D:", "\\\\server"])
def test_unusable_windows_paths(text: str) -> None:
    with pytest.raises(UsageError):
        wp.parse_windows_path(text)


def test_drive_relative_path_says_what_to_give() -> None:
    with pytest.raises(UsageError, match=r"D:\\data"):
        wp.parse_windows_path("d:data")


@pytest.mark.parametrize("text", ["data", "\\data", "D:\\data\\CON", "D:\\dir.\\x", "D:\\a|b"])
def test_backing_paths_that_cannot_be_served(text: str) -> None:
    with pytest.raises(UsageError):
        wp.check_backing_path(text)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("D:\\data=L:", ("D:\\data", "L:")),
        ("D:\\data=l", ("D:\\data", "L:")),
        ("d:/data=L:\\", ("D:\\data", "L:")),
        ("D:\\a=b=L:", ("D:\\a=b", "L:")),
        ("\\\\srv\\share\\d=C:\\mnt\\live", ("\\\\srv\\share\\d", "C:\\mnt\\live")),
        ("D:\\data", ("D:\\data", None)),
    ],
)
def test_serve_specs(spec: str, expected: tuple[str, str | None]) -> None:
    assert wp.parse_serve_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "=L:", "D:\\data=", "D:\\data=foo", "data=L:", "D:\\data=1:"])
def test_bad_serve_specs(spec: str) -> None:
    with pytest.raises(UsageError):
        wp.parse_serve_spec(spec)


# ------------------------------------------------- case-insensitive names


def test_upcase_is_one_code_unit_per_character() -> None:
    assert wp.upcase("abc\u00e9") == "ABC\u00c9"
    assert wp.upcase("stra\u00dfe") == "STRA\u00dfE"  # "ß" would become "SS"
    assert wp.upcase("\ufb01") == "\ufb01"  # "ﬁ" would become "FI"
    assert wp.upcase("\U00010428") == "\U00010428"  # outside the BMP: left alone
    assert len(wp.upcase("\u0149")) == 1  # "ŉ".upper() is two characters


def test_names_equal_ignores_case_only() -> None:
    assert wp.names_equal("Readme.TXT", "readme.txt")
    assert not wp.names_equal("readme.txt", "readme.txt ")


def test_ntfs_order_is_upcased_utf16_order() -> None:
    names = ["b", "A", "a", "_x", "Z", "\uff21", "\U0001f600", "\u00e9"]
    ordered = sorted(names, key=wp.ntfs_sort_key)
    # "_" (0x5F) sorts after upper-case letters, as on NTFS; the emoji's
    # surrogates (0xD83D) sort before U+FF21 although its code point is larger
    assert ordered == ["A", "a", "b", "Z", "_x", "\u00e9", "\U0001f600", "\uff21"]


@given(st.lists(_names, unique=True, max_size=20))
def test_ntfs_order_is_total_and_consistent(names: list[str]) -> None:
    keys = [wp.ntfs_sort_key(n) for n in names]
    assert len(set(keys)) == len(names)
    for a in names:
        for b in names:
            if a != b and wp.names_equal(a, b):
                assert wp.ntfs_sort_key(a)[0] == wp.ntfs_sort_key(b)[0]


def test_find_name_prefers_the_exact_spelling() -> None:
    names = ["readme", "README", "Other"]
    assert wp.find_name(names, "README") == "README"
    assert wp.find_name(names, "readme") == "readme"
    assert wp.find_name(names, "ReadMe") == "README"  # first in NTFS order
    assert wp.find_name(names, "OTHER") == "Other"
    assert wp.find_name(names, "missing") is None


# ---------------------------------------------------------- drive letters


@pytest.mark.parametrize(("text", "letter"), [("V", "V:"), ("v:", "V:"), ("V:\\", "V:"), ("q:/", "Q:")])
def test_drive_letters(text: str, letter: str) -> None:
    assert wp.is_drive_letter(text)
    assert wp.parse_drive_letter(text) == letter


@pytest.mark.parametrize("text", ["", "VV", "1:", "V:x", "V:\\x", ":", "\u00c4:"])
def test_bad_drive_letters(text: str) -> None:
    assert not wp.is_drive_letter(text)
    with pytest.raises(UsageError, match="bad drive letter"):
        wp.parse_drive_letter(text)


def test_taken_letter_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="V: is already in use"):
        wp.check_drive_letter("v", {"C:", "v"})
    assert wp.check_drive_letter("W:", lambda: ["C:", "V:"]) == "W:"


def test_first_free_letter_counts_down_from_v() -> None:
    assert wp.first_free_letter(set()) == "V:"
    assert wp.first_free_letter({"V:", "U:", "S:"}) == "T:"
    assert wp.first_free_letter(lambda: {"V"}) == "U:"
    taken = {f"{chr(c)}:" for c in range(ord("D"), ord("V") + 1)}
    with pytest.raises(UsageError, match="no free drive letter"):
        wp.first_free_letter(taken)
    assert wp.first_free_letter(taken - {"D:"}) == "D:"


@pytest.mark.skipif(sys.platform == "win32", reason="GetLogicalDrives answers on Windows")
def test_no_taken_letters_without_windows() -> None:
    assert wp.taken_letters_windows() == set()


# ---------------------------------------------------- FILETIME, attributes


def test_filetime_of_known_instants() -> None:
    # the values of winfspy's win32_filetime doctests (KB167296)
    assert wp.ns_to_filetime(0) == 116444736000000000
    assert wp.ns_to_filetime(1248562800 * 10**9) == 128930364000000000  # 2009-07-25 23:00 UTC
    assert wp.filetime_to_ns(128930364000000000) == 1248562800 * 10**9


def test_filetime_rounds_down_and_clamps() -> None:
    assert wp.ns_to_filetime(199) == wp.EPOCH_AS_FILETIME + 1
    assert wp.ns_to_filetime(-1) == wp.EPOCH_AS_FILETIME - 1  # just before 1970
    assert wp.ns_to_filetime(-(wp.EPOCH_AS_FILETIME * 100) - 10**9) == 1  # before 1601
    assert wp.ns_to_filetime(10**30) == wp.MAX_FILETIME


@given(st.integers(min_value=-(10**18), max_value=10**19))
def test_filetime_round_trip_to_100ns(ns: int) -> None:
    assert wp.filetime_to_ns(wp.ns_to_filetime(ns)) == ns - ns % 100


@pytest.mark.parametrize(
    ("mode", "attrs"),
    [
        (stat.S_IFDIR | 0o755, wp.FILE_ATTRIBUTE_DIRECTORY),
        (stat.S_IFDIR | 0o555, wp.FILE_ATTRIBUTE_DIRECTORY),
        (stat.S_IFREG | 0o644, wp.FILE_ATTRIBUTE_ARCHIVE),
        (stat.S_IFREG | 0o444, wp.FILE_ATTRIBUTE_ARCHIVE | wp.FILE_ATTRIBUTE_READONLY),
        (stat.S_IFLNK | 0o777, wp.FILE_ATTRIBUTE_REPARSE_POINT),
        (stat.S_IFIFO | 0o644, wp.FILE_ATTRIBUTE_SYSTEM),
        (stat.S_IFCHR | 0o600, wp.FILE_ATTRIBUTE_SYSTEM),
    ],
)
def test_file_attributes_from_mode(mode: int, attrs: int) -> None:
    assert wp.file_attributes(mode) == attrs


def test_attribute_values_are_winnt_h() -> None:
    assert (wp.FILE_ATTRIBUTE_READONLY, wp.FILE_ATTRIBUTE_HIDDEN, wp.FILE_ATTRIBUTE_SYSTEM) == (1, 2, 4)
    assert (wp.FILE_ATTRIBUTE_DIRECTORY, wp.FILE_ATTRIBUTE_ARCHIVE) == (0x10, 0x20)
    assert wp.FILE_ATTRIBUTE_REPARSE_POINT == 0x400
    assert wp.IO_REPARSE_TAG_SYMLINK == 0xA000000C
    assert wp.file_attributes(stat.S_IFREG | 0o644, hidden=True) & wp.FILE_ATTRIBUTE_HIDDEN


def test_readonly_flag_and_mode_bits() -> None:
    assert wp.mode_with_readonly(0o100644, True) == 0o444
    assert wp.mode_with_readonly(0o100444, False) == 0o644
    assert wp.mode_with_readonly(0o100640, False) == 0o640
    assert wp.mode_with_readonly(0o104755, True) == 0o4555


# --------------------------------------------------------------- identity


def test_file_index_is_64_bits() -> None:
    assert wp.file_index(12345) == 12345
    assert wp.file_index(2**64 - 1) == 2**64 - 1
    assert wp.file_index(-1) == 2**64 - 1
    assert wp.file_index((5 << 64) | 7) == 5 ^ 7


def test_volume_serials_are_stable_distinct_and_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = wp.volume_serial("20240601T120000-aaaaaa"), wp.volume_serial("20240601T120000-bbbbbb")
    assert a != b and a == wp.volume_serial("20240601T120000-aaaaaa")
    assert 0 < a < 2**32
    monkeypatch.setattr(wp.zlib, "crc32", lambda data: 0)
    assert wp.volume_serial("x") == 1


def test_identity_of_a_stat_result(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st_ = os.stat(f)
    ident = wp.identity_from_stat(st_)
    assert ident == wp.FileIdentity(st_.st_dev & 0xFFFFFFFF, st_.st_ino)
    assert wp.identity_from_stat(st_, serial=7).volume_serial == 7


# ---------------------------------------------------- security descriptors

# S-1-5-18 (LocalSystem) as every Windows tool shows it in binary:
# revision 1, 1 sub-authority, authority 5 (big-endian, 6 bytes), 18 (LE)
SYSTEM_SID = bytes.fromhex("010100000000000512000000")


def test_sid_binary_form() -> None:
    assert wp.sid_to_bytes("S-1-5-18") == SYSTEM_SID
    assert wp.sid_to_bytes("SY") == SYSTEM_SID
    assert wp.sid_from_bytes(SYSTEM_SID) == ("S-1-5-18", 12)
    sid = "S-1-5-21-3623811015-3361044348-30300820-1013"
    assert wp.sid_from_bytes(wp.sid_to_bytes(sid))[0] == sid
    assert wp.sid_from_bytes(wp.sid_to_bytes("S-1-281474976710655-1"))[0] == "S-1-281474976710655-1"


@pytest.mark.parametrize("bad", ["S-2-5", "X-1-5-18", "S-1", "S-1-5-x", "S-1-5-4294967296", "ZZ"])
def test_bad_sids(bad: str) -> None:
    with pytest.raises(wp.SecurityDescriptorError):
        wp.sid_to_bytes(bad) if bad != "ZZ" else wp.sddl_to_sd(f"O:{bad}")


def test_self_relative_layout_by_hand() -> None:
    """O:SY G:SY D:(A;;FA;;;WD) laid out as winnt.h says, not as the codec does."""
    everyone = bytes.fromhex("010100000000000100000000")  # S-1-1-0
    ace = struct.pack("<BBHI", 0, 0, 8 + len(everyone), wp.FILE_ALL_ACCESS) + everyone
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(ace), 1, 0) + ace
    o_dacl = 20
    o_owner = o_dacl + len(acl)
    o_group = o_owner + len(SYSTEM_SID)
    control = wp.SE_SELF_RELATIVE | wp.SE_DACL_PRESENT
    expected = (
        struct.pack("<BBHIIII", 1, 0, control, o_owner, o_group, 0, o_dacl) + acl + SYSTEM_SID + SYSTEM_SID
    )
    assert wp.sddl_to_bytes("O:SYG:SYD:(A;;FA;;;WD)") == expected
    assert wp.bytes_to_sddl(expected) == "O:SYG:SYD:(A;;FA;;;WD)"
    assert wp.security_descriptor_length(expected + b"\0\0\0\0") == len(expected)


@pytest.mark.parametrize(
    "sddl",
    [
        "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICIIO;GA;;;CO)(D;;0x10000;;;NU)(A;ID;FR;;;BU)",
        "O:S-1-22-1-1000G:S-1-22-2-100D:P(A;;0x1f019f;;;S-1-22-1-1000)(A;;FR;;;WD)",
        "D:NO_ACCESS_CONTROL",
        "O:SYS:(AU;SAFA;FA;;;WD)(ML;;0x1;;;HI)",
        "G:BU",
        "D:",
    ],
)
def test_sddl_and_binary_round_trip(sddl: str) -> None:
    sd = wp.sddl_to_sd(sddl)
    blob = sd.to_bytes()
    again = wp.SecurityDescriptor.from_bytes(blob)
    assert again == sd
    assert again.to_bytes() == blob
    assert wp.sddl_to_sd(wp.sd_to_sddl(again)) == sd


def test_null_dacl_is_not_an_absent_dacl() -> None:
    null = wp.SecurityDescriptor.from_bytes(wp.sddl_to_bytes("D:NO_ACCESS_CONTROL"))
    none = wp.SecurityDescriptor.from_bytes(wp.sddl_to_bytes("O:SY"))
    assert null.has_dacl and null.dacl is None
    assert not none.has_dacl


def test_undecoded_aces_survive_byte_for_byte() -> None:
    object_ace = struct.pack("<BBHII", 5, 0, 24, 0x10, 0) + SYSTEM_SID  # ACCESS_ALLOWED_OBJECT, no GUIDs
    acl = struct.pack("<BBHHH", 4, 0, 8 + len(object_ace), 1, 0) + object_ace
    blob = struct.pack("<BBHIIII", 1, 0, wp.SE_SELF_RELATIVE | wp.SE_DACL_PRESENT, 0, 0, 0, 20) + acl
    sd = wp.SecurityDescriptor.from_bytes(blob)
    assert sd.dacl is not None and sd.dacl.aces[0].raw == object_ace
    assert sd.to_bytes() == blob
    with pytest.raises(wp.SecurityDescriptorError):
        wp.sd_to_sddl(sd)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01\x00" * 5,
        struct.pack("<BBHIIII", 2, 0, wp.SE_SELF_RELATIVE, 0, 0, 0, 0),  # revision
        struct.pack("<BBHIIII", 1, 0, 0, 0, 0, 0, 0),  # absolute format
        struct.pack("<BBHIIII", 1, 0, wp.SE_SELF_RELATIVE, 20, 0, 0, 0) + b"\x01\x05",  # cut SID
        struct.pack("<BBHIIII", 1, 0, wp.SE_SELF_RELATIVE | wp.SE_DACL_PRESENT, 0, 0, 0, 20)
        + struct.pack("<BBHHH", 2, 0, 64, 1, 0),  # ACL longer than the buffer
    ],
)
def test_garbage_is_not_a_descriptor(blob: bytes) -> None:
    with pytest.raises(wp.SecurityDescriptorError):
        wp.SecurityDescriptor.from_bytes(blob)


@pytest.mark.parametrize(
    "bad", ["Q:SY", "O:SYO:SY", "D:(A;;FA;;SY)", "D:(X;;FA;;;SY)", "D:(A;ZZ;FA;;;SY)", "D:ZZ"]
)
def test_bad_sddl(bad: str) -> None:
    with pytest.raises(wp.SecurityDescriptorError):
        wp.sddl_to_sd(bad)


def test_domain_aliases_need_a_domain() -> None:
    with pytest.raises(wp.SecurityDescriptorError, match="domain"):
        wp.sddl_to_sd("O:DA")


def test_default_descriptor_from_mode_bits() -> None:
    sd = wp.SecurityDescriptor.from_bytes(wp.default_security_descriptor(stat.S_IFDIR | 0o750, 1000, 100))
    assert sd.owner == "S-1-22-1-1000" and sd.group == "S-1-22-2-100"
    assert sd.control & wp.SE_DACL_PROTECTED
    assert sd.dacl is not None
    masks = {a.sid: a.mask for a in sd.dacl.aces}
    base = wp.FILE_READ_ATTRIBUTES | wp.READ_CONTROL | wp.SYNCHRONIZE
    owner = masks["S-1-22-1-1000"]
    assert owner & wp.FILE_GENERIC_WRITE == wp.FILE_GENERIC_WRITE and owner & wp.FILE_DELETE_CHILD
    assert owner & wp.WRITE_DAC and owner & wp.WRITE_OWNER
    assert masks["S-1-22-2-100"] == base | wp.FILE_GENERIC_READ | wp.FILE_GENERIC_EXECUTE
    assert masks["S-1-1-0"] == base  # others: nothing but seeing the entry
    assert masks["S-1-5-18"] == masks["S-1-5-32-544"] == wp.FILE_ALL_ACCESS
    assert all(a.ace_type == wp.ACCESS_ALLOWED_ACE_TYPE for a in sd.dacl.aces)


def test_default_descriptor_of_a_file_has_no_delete_child() -> None:
    sd = wp.SecurityDescriptor.from_bytes(wp.default_security_descriptor(stat.S_IFREG | 0o666, 0, 0))
    assert sd.dacl is not None
    for ace in sd.dacl.aces[:3]:
        assert not ace.mask & wp.FILE_DELETE_CHILD
        assert ace.mask & wp.FILE_GENERIC_WRITE == wp.FILE_GENERIC_WRITE


def test_generic_rights_map_like_winfsp() -> None:
    assert wp.map_generic_rights(wp.GENERIC_ALL) == wp.FILE_ALL_ACCESS
    assert wp.map_generic_rights(wp.GENERIC_READ | wp.GENERIC_EXECUTE) == (
        wp.FILE_GENERIC_READ | wp.FILE_GENERIC_EXECUTE
    )
    assert wp.map_generic_rights(wp.DELETE) == wp.DELETE


BASE = "O:S-1-22-1-1G:S-1-22-2-1D:P(A;;FA;;;S-1-22-1-1)S:(ML;;0x1;;;LW)"


def _merge(info: int, mod: str) -> wp.SecurityDescriptor:
    return wp.SecurityDescriptor.from_bytes(
        wp.merge_security(wp.sddl_to_bytes(BASE), info, wp.sddl_to_bytes(mod))
    )


def test_merge_replaces_only_what_is_named() -> None:
    out = _merge(wp.DACL_SECURITY_INFORMATION, "O:SYD:(A;;GA;;;BU)")
    assert out.owner == "S-1-22-1-1" and out.group == "S-1-22-2-1"
    assert out.dacl is not None and [(a.sid, a.mask) for a in out.dacl.aces] == [
        ("S-1-5-32-545", wp.FILE_ALL_ACCESS)
    ]
    assert not out.control & wp.SE_DACL_PROTECTED  # taken from the modification
    assert out.sacl == wp.sddl_to_sd(BASE).sacl


def test_merge_owner_and_group() -> None:
    out = _merge(wp.OWNER_SECURITY_INFORMATION | wp.GROUP_SECURITY_INFORMATION, "O:BAG:BU")
    assert (out.owner, out.group) == ("S-1-5-32-544", "S-1-5-32-545")
    assert out.dacl == wp.sddl_to_sd(BASE).dacl
    with pytest.raises(wp.SecurityDescriptorError, match="owner"):
        _merge(wp.OWNER_SECURITY_INFORMATION, "G:BU")


def test_merge_protection_flags() -> None:
    assert _merge(
        wp.DACL_SECURITY_INFORMATION | wp.PROTECTED_DACL_SECURITY_INFORMATION, "D:(A;;FA;;;WD)"
    ).control & (wp.SE_DACL_PROTECTED)
    out = _merge(wp.DACL_SECURITY_INFORMATION | wp.UNPROTECTED_DACL_SECURITY_INFORMATION, "D:P(A;;FA;;;WD)")
    assert not out.control & wp.SE_DACL_PROTECTED


def test_merge_label_only_touches_label_aces() -> None:
    base = "O:SYD:(A;;FA;;;WD)S:(AU;SA;FA;;;WD)(ML;;0x1;;;LW)"
    out = wp.SecurityDescriptor.from_bytes(
        wp.merge_security(
            wp.sddl_to_bytes(base), wp.LABEL_SECURITY_INFORMATION, wp.sddl_to_bytes("S:(ML;;0x1;;;HI)")
        )
    )
    assert out.sacl is not None
    kinds = sorted((a.ace_type, a.sid) for a in out.sacl.aces)
    assert kinds == [
        (wp.SYSTEM_AUDIT_ACE_TYPE, "S-1-1-0"),
        (wp.SYSTEM_MANDATORY_LABEL_ACE_TYPE, "S-1-16-12288"),
    ]


def test_merge_dacl_absent_from_modification_removes_it() -> None:
    out = _merge(wp.DACL_SECURITY_INFORMATION, "O:SY")
    assert not out.has_dacl


# ------------------------------------------------------------ reparse data


def _symlink_fields(data: bytes) -> tuple[int, int, str, str, int]:
    tag, length, _ = struct.unpack_from("<IHH", data)
    so, sl, po, pl, flags = struct.unpack_from("<HHHHI", data, 8)
    base = 20
    assert length == len(data) - 8
    sub = data[base + so : base + so + sl].decode("utf-16-le")
    prn = data[base + po : base + po + pl].decode("utf-16-le")
    return tag, flags, sub, prn, length


def test_relative_symlink_reparse_buffer() -> None:
    tag, flags, sub, prn, _ = _symlink_fields(wp.symlink_reparse_data("../dir/a:b", windows=False))
    assert tag == wp.IO_REPARSE_TAG_SYMLINK and flags == wp.SYMLINK_FLAG_RELATIVE
    assert sub == prn == "..\\dir\\a\uf03ab"


def test_absolute_symlink_reparse_buffers() -> None:
    _, flags, sub, prn, _ = _symlink_fields(wp.symlink_reparse_data("C:\\Users\\x", windows=True))
    assert (flags, sub, prn) == (0, "\\??\\C:\\Users\\x", "C:\\Users\\x")
    _, flags, sub, prn, _ = _symlink_fields(wp.symlink_reparse_data("\\\\srv\\share\\x", windows=True))
    assert (flags, sub, prn) == (0, "\\??\\UNC\\srv\\share\\x", "\\\\srv\\share\\x")


def test_posix_absolute_target_is_rooted_in_the_drive() -> None:
    _, flags, sub, _, _ = _symlink_fields(wp.symlink_reparse_data("/etc/hosts", windows=False))
    assert (flags, sub) == (wp.SYMLINK_FLAG_RELATIVE, "\\etc\\hosts")


def test_backslash_is_a_name_character_in_posix_targets() -> None:
    assert wp.parse_link_target("a\\b", windows=False).parts == ("a\\b",)
    assert wp.parse_link_target("a\\b", windows=True).parts == ("a", "b")


def test_parse_symlink_reparse_buffers() -> None:
    assert wp.parse_symlink_reparse_data(wp.symlink_reparse_data("C:\\x", windows=True)) == (
        "\\??\\C:\\x",
        False,
    )
    assert wp.parse_symlink_reparse_data(wp.symlink_reparse_data("a/b", windows=False)) == ("a\\b", True)
    junction = struct.pack("<IHH", 0xA0000003, 12, 0) + bytes(12)
    with pytest.raises(ValueError, match="not a symbolic link"):
        wp.parse_symlink_reparse_data(junction)
    with pytest.raises(ValueError):
        wp.parse_symlink_reparse_data(b"\x0c\x00\x00\xa0")


def _links(table: dict[str, str]):
    return lambda parts: table.get("/".join(parts))


def test_resolve_relative_and_dotdot_links() -> None:
    links = _links({"a/l": "../b", "b/m": "./c/d"})
    assert wp.resolve_links(["a", "l", "x"], links, windows=False) == (("b", "x"), None)
    assert wp.resolve_links(["b", "m"], links, windows=False) == (("b", "c", "d"), None)
    assert wp.resolve_links(["b", "m"], links, resolve_last=False, windows=False) == (("b", "m"), None)
    assert wp.resolve_links(["..", "..", "b", "m"], links, windows=False) == (("b", "c", "d"), None)


def test_resolve_rooted_and_absolute_links() -> None:
    links = _links({"r": "/top/x", "w": "D:\\elsewhere"})
    assert wp.resolve_links(["r", "y"], links, windows=False) == (("top", "x", "y"), None)
    assert wp.resolve_links(["w", "a:b"], links, windows=True) == ((), "\\??\\D:\\elsewhere\\a\uf03ab")


def test_resolve_stops_at_missing_names_and_loops() -> None:
    assert wp.resolve_links(["no", "such"], _links({}), windows=False) == (("no", "such"), None)
    with pytest.raises(wp.LinkLoop) as info:
        wp.resolve_links(["a"], _links({"a": "b", "b": "a"}), windows=False)
    assert info.value.errno == __import__("errno").ELOOP


# ---------------------------------------------------------- control pipe

ME = "S-1-5-21-1004336348-1177238915-682003330-1001"


def test_control_pipe_names() -> None:
    assert wp.control_pipe_name("alice") == "\\\\.\\pipe\\vspfs-alice"
    assert wp.control_pipe_name("DOMAIN\\bob smith") == "\\\\.\\pipe\\vspfs-DOMAIN_bob_smith"
    a, b = wp.control_pipe_name("x", "C:\\state1"), wp.control_pipe_name("x", "C:\\state2")
    assert a != b and a.startswith("\\\\.\\pipe\\vspfs-x-")
    assert wp.is_pipe_name(a) and wp.is_pipe_name("//./pipe/x")
    assert not wp.is_pipe_name("\\\\.\\pipe\\") and not wp.is_pipe_name("/run/vspfs.sock")


def test_pipe_descriptor_is_owner_only() -> None:
    sddl = wp.pipe_sddl(ME)
    sd = wp.sddl_to_sd(sddl)
    assert sd.owner == ME and sd.control & wp.SE_DACL_PROTECTED
    assert sd.dacl is not None
    first = sd.dacl.aces[0]
    assert (first.ace_type, first.sid) == (wp.ACCESS_DENIED_ACE_TYPE, "S-1-5-2")  # NETWORK, denied first
    allowed = {a.sid for a in sd.dacl.aces if a.ace_type == wp.ACCESS_ALLOWED_ACE_TYPE}
    assert allowed == {ME, "S-1-5-18"}
    wp.check_owner_only(wp.sddl_to_bytes(sddl), ME)


@pytest.mark.parametrize(
    "sddl",
    [
        f"O:S-1-5-21-1-2-3-4444D:P(A;;GA;;;{ME})",  # someone else's pipe
        f"O:{ME}D:P(A;;GA;;;{ME})(A;;GR;;;WD)",  # Everyone may read
        f"O:{ME}D:NO_ACCESS_CONTROL",
        f"O:{ME}",
    ],
)
def test_pipes_that_are_not_owner_only_are_refused(sddl: str) -> None:
    with pytest.raises(UsageError, match="control pipe"):
        wp.check_owner_only(wp.sddl_to_bytes(sddl), ME)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the refusal off Windows")
def test_current_user_sid_needs_windows() -> None:
    with pytest.raises(UsageError):
        wp.current_user_sid()


# ----------------------------------------------------------------- locking


def test_exclusive_lock_is_refused_to_a_second_holder(tmp_path: Path) -> None:
    path = tmp_path / "VSP_x.vsp"
    path.write_bytes(b"")
    a = os.open(path, os.O_RDWR)
    b = os.open(path, os.O_RDWR)
    try:
        assert wp.try_lock_exclusive(a)
        assert not wp.try_lock_exclusive(b)
        wp.unlock(a)
        assert wp.try_lock_exclusive(b)
    finally:
        os.close(a)
        os.close(b)
