"""A stand-in for a ctypes DLL, for testing Win32 code on Linux.

Each export behaves as a ctypes function does once declared: it must have
``argtypes`` (and the code under test sets ``restype``), takes exactly that
many arguments, and converts each with its declared type's ``from_param``,
which raises for a wrong type as ctypes would. Calls are recorded; the work
is done by the DLL's ``do_<name>`` method, or by ``default`` where it has
none.
"""

from __future__ import annotations

from typing import Any


class FakeFunction:
    """One export: declared like ctypes (restype, argtypes), checks its calls."""

    def __init__(self, dll: FakeDll, name: str) -> None:
        self.dll = dll
        self.name = name
        self.restype: object = None
        self.argtypes: list[Any] | None = None

    def __call__(self, *args: object) -> object:
        assert self.argtypes is not None, f"{self.name} called without a declared signature"
        assert len(args) == len(self.argtypes), f"{self.name}: {len(args)} arguments for {len(self.argtypes)}"
        for argtype, arg in zip(self.argtypes, args, strict=True):
            argtype.from_param(arg)  # raises as ctypes would for a wrong type
        self.dll.calls.append((self.name, args))
        handler = getattr(self.dll, "do_" + self.name, None)
        return self.dll.default(self.name, args) if handler is None else handler(*args)


class FakeDll:
    """A DLL whose exports are :class:`FakeFunction` s doing ``do_<name>``."""

    def __init__(self) -> None:
        self.functions: dict[str, FakeFunction] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> FakeFunction:
        if name.startswith(("_", "do_")):
            raise AttributeError(name)
        return self.functions.setdefault(name, FakeFunction(self, name))

    def default(self, name: str, args: tuple[object, ...]) -> object:
        raise AssertionError(f"{name} is not expected to be called here")
