"""The vspfs configuration file (TOML): defaults for the daemon and for backup jobs.

Every default that a backup job uses (quiet period, reaction to a timeout or
a snapshot error, cache sizes, the Cache File Volume List and the VSP Volume
Exclude List) can be set once here instead of on every command line, the way
an administrator sets them once for a backup policy. Command-line options
always win over the file.

Where (docs/backup.md, "Configuration file"):

* system-wide ``/etc/vspfs/config.toml``;
* per user ``$XDG_CONFIG_HOME/vspfs/config.toml`` (``~/.config/...``),
  which overrides the system file key by key;
* on Windows ``%ProgramData%\\vspfs\\config.toml`` and
  ``%APPDATA%\\vspfs\\config.toml`` instead;
* ``--config FILE`` or ``$VSPFS_CONFIG`` replace both (an empty value means
  no file at all, which tests use to keep a machine's files out).

A file is checked whole when it is read, whatever the command needs from
it: an unknown key or a bad value is an error that names the file and the
key, because a typo that is silently ignored turns into a backup policy
nobody chose.
"""

from __future__ import annotations

import math
import ntpath
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vspfs import winplatform
from vspfs.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SYSTEM_CONFIG = "/etc/vspfs/config.toml"

#: built-in defaults, the values documented in docs/backup.md
DEFAULTS: dict[str, Any] = {
    "cache_volumes": [],
    "exclude_volumes": [],
    "snapshot": {
        "cache_size": "16M",
        "max_cache_size": "20%",
        "policy": "invalidate",
    },
    "backup": {
        "busy_file_wait": 5.0,
        "busy_file_timeout": 300.0,
        "on_timeout": "continue",
        "on_error": "continue",
        "cache_volumes": [],
        "exclude_volumes": [],
    },
}

#: words that mean "no maximum" for max_cache_size
UNBOUNDED = ("none", "unbounded", "unlimited")


class ConfigError(UsageError):
    """A configuration file cannot be read, or holds an unknown key or a bad value."""


# ------------------------------------------------------------------ values


def check_seconds(value: object) -> float:
    """A non-negative finite number of seconds (fractions allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a number of seconds >= 0, not {value!r}")
    return float(value)


def check_size(value: object, *, allow_none: bool = False) -> int | str | None:
    """Bytes (an integer), or a string such as "64M", "2G", "10%" (or "none" for a maximum).

    Returned as given (a percentage needs the volume's size, which only the
    daemon knows); only the syntax is checked here.
    """
    from vspfs.cachefile import parse_size

    if isinstance(value, bool):
        raise ValueError(f"must be a size such as 64M, 2G or 10%, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be a size >= 0, not {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a size such as 64M, 2G or 10%, not {value!r}")
    if allow_none and value.strip().lower() in UNBOUNDED:
        return None
    try:
        parse_size(value, 100)
    except UsageError:
        extra = " or none" if allow_none else ""
        raise ValueError(f"must be a size such as 64M, 2G or 10%{extra}, not {value!r}") from None
    return value.strip()


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value

    return check


def _paths(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of directory paths, not {value!r}")
    out = []
    for v in value:
        path = os.path.expanduser(v)
        if not os.path.isabs(path):
            raise ValueError(f"must hold absolute paths, not {v!r}")
        out.append(os.path.normpath(path))
    return out


_POLICY = _choice("invalidate", "refuse-writes")

_SIZE_KEYS: dict[str, Callable[[object], Any]] = {
    "cache_size": check_size,
    "max_cache_size": lambda v: check_size(v, allow_none=True),
}
_SNAPSHOT_KEYS: dict[str, Callable[[object], Any]] = {**_SIZE_KEYS, "policy": _POLICY}

SCHEMA: dict[str, Any] = {
    "cache_volumes": _paths,
    "exclude_volumes": _paths,
    "snapshot": _SNAPSHOT_KEYS,
    "backup": {
        "busy_file_wait": check_seconds,
        "busy_file_timeout": check_seconds,
        "on_timeout": _choice("continue", "abort"),
        "on_error": _choice("continue", "abort"),
        "cache_volumes": _paths,
        "exclude_volumes": _paths,
    },
    # "volumes" is a table of tables keyed by volume: see _check_volumes
}


# ------------------------------------------------------------------- files


def default_paths() -> list[str]:
    """The system file, then the per-user file (later ones override earlier ones).

    Not ``/etc`` on Windows: there it would name a directory of the current
    drive, which any user may create (``C:\\etc``), and so plant a policy.
    """
    if winplatform.running_on_windows():
        env = os.environ
        system = env.get("ProgramData") or "C:\\ProgramData"  # Windows' environ ignores case
        user = env.get("APPDATA") or ntpath.join(env.get("USERPROFILE") or "C:\\", "AppData", "Roaming")
        return [ntpath.join(system, "vspfs", "config.toml"), ntpath.join(user, "vspfs", "config.toml")]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [SYSTEM_CONFIG, os.path.join(base, "vspfs", "config.toml")]


@dataclass
class Config:
    """The merged configuration: built-in defaults, then each file in order."""

    values: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def get(self, section: str | None, key: str) -> Any:
        """A value of a section (None: the top level), the file's or the built-in default."""
        if section is None:
            return self.values.get(key, DEFAULTS.get(key))
        table = self.values.get(section, {})
        if key in table:
            return table[key]
        return DEFAULTS.get(section, {}).get(key)

    def volume_options(self) -> dict[str, dict[str, Any]]:
        """Per-volume overrides ([volumes."PATH"] tables), keyed as written."""
        return {k: dict(v) for k, v in self.values.get("volumes", {}).items()}


def _check_table(path: str, prefix: str, data: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        rule = schema.get(key)
        if rule is None:
            known = ", ".join(sorted(f"{prefix}{k}" for k in schema))
            raise ConfigError(f"config file {path}: unknown key {name!r} (known keys: {known})")
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config file {path}: {name} must be a table ([{name}])")
            out[key] = _check_table(path, f"{name}.", value, rule)
            continue
        try:
            out[key] = rule(value)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: {name} {exc}") from None
    return out


def _check_volumes(path: str, data: object) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path}: volumes must be a table of tables ([volumes."/srv/data"])')
    out: dict[str, dict[str, Any]] = {}
    for vol, table in data.items():
        if not vol:
            raise ConfigError(f"config file {path}: a [volumes] table needs a volume path or name")
        if not isinstance(table, dict):
            raise ConfigError(f'config file {path}: volumes."{vol}" must be a table')
        out[vol] = _check_table(path, f'volumes."{vol}".', table, _SIZE_KEYS)
    return out


def parse(text: str, path: str) -> dict[str, Any]:
    """Check one file's text; the validated values (ConfigError naming the key if bad)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    volumes = data.pop("volumes", None)
    out = _check_table(path, "", data, SCHEMA)
    if volumes is not None:
        out["volumes"] = _check_volumes(path, volumes)
    return out


def _read(path: str, *, required: bool) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    return parse(text, path)


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if key == "volumes":
            vols = into.setdefault("volumes", {})
            for vol, table in value.items():
                vols.setdefault(vol, {}).update(table)
        elif isinstance(value, dict):
            into.setdefault(key, {}).update(value)
        else:
            into[key] = value


def load(explicit: str | None = None) -> Config:
    """Read the configuration.

    ``explicit`` (``--config``) or ``$VSPFS_CONFIG`` name the only file to
    read (it must exist; an empty string means none); otherwise the system
    file and then the per-user file, each optional.
    """
    if explicit is None:
        explicit = os.environ.get("VSPFS_CONFIG")
    config = Config()
    if explicit is not None:
        candidates, required = ([explicit] if explicit else []), True
    else:
        candidates, required = default_paths(), False
    for path in candidates:
        data = _read(path, required=required)
        if data is not None:
            _merge(config.values, data)
            config.files.append(path)
    return config
