"""The settings table, and its resolution into one validated :class:`Settings` object.

Each setting is one row of :data:`SETTINGS`: its name, default, the parser of text from
the environment or a file, a help line, the check of its value (run once, when a queue is
opened) and the backends it applies to. Adding a setting is adding its row, the code that
uses it (``queue.settings.NAME``) and its test.

Precedence, highest first: an argument given to the constructor, then the environment
variable ``SQQUEUE_<SETTING>``, then the config file, then the built-in default.

The config file is the first of: the path in ``SQQUEUE_CONFIG``; ``sqqueue.toml`` in the
working directory; the ``[tool.sqqueue]`` table of ``pyproject.toml`` there. Its top-level
keys apply to every queue; a ``[queues.<name>]`` table (``[tool.sqqueue.queues.<name>]``
in pyproject) overrides them for one queue::

    # sqqueue.toml
    db_path = "var/jobs.db"
    default_visibility_timeout = 60

    [queues.emails]
    default_max_attempts = 10
    retry = "exponential:1:600"

``SQQUEUE_CONFIG=none`` turns the file off. Unknown keys and bad values raise
``ValueError`` naming where they came from.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .core.checks import (
    MAX_ATTEMPTS,
    MAX_DELAY,
    MAX_PRIORITY,
    MAX_VISIBILITY_TIMEOUT,
    MIN_PRIORITY,
    bounded_int,
    seconds,
)
from .exceptions import ErrorKind, QueueError
from .names import validate_queue_name
from .retry import RetryPolicy

__all__ = [
    "SETTINGS",
    "UNSET",
    "Resolved",
    "Settings",
    "check_accept_unsigned_has_key",
    "find_config_file",
    "load",
    "parse_retry",
    "resolve",
]

logger = logging.getLogger(__name__)


class _Unset:
    """Marks an argument the caller did not give (``None`` is a real value for some)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unset>"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"expected an integer, got {value!r}")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _str(value)


def _synchronous(value: Any) -> str:
    text = _str(value).lower()
    if text not in ("normal", "full"):
        raise ValueError(f"expected 'normal' or 'full', got {value!r}")
    return text


def _optional_seconds(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _float(value)


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _int(value)


def _dedup_window(value: Any) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "exists":
        return "exists"
    return _float(value)


def _on_expire(value: Any) -> str:
    text = _str(value).lower()
    if text not in ("dead", "drop"):
        raise ValueError(f"expected 'dead' or 'drop', got {value!r}")
    return text


def parse_retry(value: Any) -> RetryPolicy:
    """``"immediate"``, ``"fixed:30"``, ``"linear:10[:cap]"``, ``"exponential:base[:cap]"``."""
    if isinstance(value, RetryPolicy):
        return value
    text = _str(value).strip().lower()
    kind, *numbers = text.split(":")
    try:
        args = [float(n) for n in numbers]
    except ValueError:
        raise ValueError(f"bad retry policy {value!r}: numbers expected after ':'") from None
    if kind == "immediate" and not args:
        return RetryPolicy.immediate()
    if kind == "fixed" and len(args) == 1:
        return RetryPolicy.fixed(args[0])
    if kind == "linear" and len(args) in (1, 2):
        return RetryPolicy.linear(args[0], cap=args[1] if len(args) == 2 else 3600.0)
    if kind == "exponential" and len(args) in (1, 2):
        base, *cap = args
        return RetryPolicy.exponential(base=base, cap=cap[0] if cap else 3600.0)
    raise ValueError(
        f"bad retry policy {value!r}: use immediate, fixed:SECONDS, linear:STEP[:CAP] "
        "or exponential:BASE[:CAP]"
    )


# Checks of values (from any source), run once when a queue is opened: each returns the
# value the queue uses, or raises QueueError saying what is wrong.


def _check_seconds(what: str, maximum: float) -> Callable[[Any], Any]:
    return lambda value: seconds(value, what, minimum=0, maximum=maximum, strict=True)


def _check_int(what: str, low: int, high: int) -> Callable[[Any], Any]:
    return lambda value: bounded_int(value, what, low, high)


def _check_statsd_host(value: Any) -> str | None:
    """A host name, or None (as is "": statsd off)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"statsd_host must be a host name, got {value!r}")
    return value


def _check_flag(what: str) -> Callable[[Any], bool]:
    """True or False only: a str such as "false" would otherwise count as true."""

    def check(value: Any) -> bool:
        if not (isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))):
            raise ValueError(f"{what} must be True or False, got {value!r}")
        return bool(value)

    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _check_dedup_window(value: Any) -> float | None:
    """None: a key holds while its message exists ("exists")."""
    if value == "exists":
        return None
    return _optional(_check_seconds("dedup_window", MAX_DELAY))(value)  # type: ignore[no-any-return]


def _check_on_expire(value: Any) -> str:
    if value not in ("dead", "drop"):
        raise QueueError(
            f"on_expire must be 'dead' or 'drop', got {value!r}", ErrorKind.INVALID_INPUT
        )
    return str(value)


def _check_accept_unsigned(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"accept_unsigned must be True or False, got {value!r}")
    return value


def check_accept_unsigned_has_key(settings: Settings, signed: bool, read_only: bool) -> None:
    """Raise ValueError when ``accept_unsigned`` is on for a queue without a signing key.

    The setting loosens a signing queue's verification; without a key nothing is verified
    at all, so it would be ignored without a word while its user believes signing is on.
    A read-only queue delivers nothing: there a value from the environment or the config
    file, which keyless tools (the dashboard, the metrics exporter) share with the
    consumers, is let be; one given as an argument is refused all the same.
    """
    if not settings.accept_unsigned or signed:
        return
    source = settings.sources["accept_unsigned"]
    if read_only and source != "argument":
        return
    given = "accept_unsigned=True" if source == "argument" else f"accept_unsigned (from {source})"
    raise ValueError(
        f"{given} needs a signing key: it lets a queue that verifies signatures deliver "
        "messages stored without one, and this queue has no key, so it would verify "
        "nothing. Give the key (signing_key=, SQQUEUE_SIGNING_KEY or "
        "SQQUEUE_SIGNING_KEY_FILE), or turn accept_unsigned off"
    )


def _check_retry(value: Any) -> RetryPolicy:
    if value is None:
        return RetryPolicy.immediate()
    if not isinstance(value, RetryPolicy):
        raise ValueError("retry must be a sqqueue.RetryPolicy")
    return value


BOTH = frozenset({"sqlite", "postgresql"})
SQLITE = frozenset({"sqlite"})


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    default: Any
    #: text (or a TOML value) from the environment or a file -> value
    parse: Callable[[Any], Any]
    help: str
    #: value -> the value the queue uses; raises QueueError or ValueError (None: as is)
    check: Callable[[Any], Any] | None = None
    #: the backends it applies to
    backends: frozenset[str] = BOTH
    #: why it does not apply to the other backend
    elsewhere: str = ""


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("db_path", "queue.db", _str, "database file", backends=SQLITE,
                elsewhere="the database is the url"),
        Setting("table_name", "message_queue", validate_queue_name, "queue name"),
        Setting("vacuum_threshold", 1000, _int, "writes between maintenance steps (0: never)",
                _check_int("vacuum_threshold", 0, 2**31)),
        Setting("vacuum_on_start", False, _bool, "full VACUUM when opening",
                _check_flag("vacuum_on_start"), backends=SQLITE,
                elsewhere="PostgreSQL's autovacuum looks after the tables"),
        Setting("default_max_attempts", 5, _int, "deliveries before the dead-letter queue",
                _check_int("default_max_attempts", 1, MAX_ATTEMPTS)),
        Setting("default_visibility_timeout", 300.0, _float, "lease length, seconds",
                _check_seconds("default_visibility_timeout", MAX_VISIBILITY_TIMEOUT)),
        Setting("default_priority", 0, _int, "priority when none is given",
                _check_int("default_priority", MIN_PRIORITY, MAX_PRIORITY)),
        Setting("statsd_host", None, _optional_str, "statsd server (enables statsd)",
                _check_statsd_host),
        Setting("statsd_port", 8125, _int, "statsd port"),  # checked when statsd_host is set
        Setting("statsd_prefix", "sqqueue", _str, "statsd metric prefix"),
        Setting("synchronous", "normal", _synchronous, "'normal' or 'full' durability",
                backends=SQLITE,
                elsewhere="durability is the server's synchronous_commit setting"),
        Setting("lock_timeout", 30.0, _float, "seconds to wait for a locked database",
                _check_seconds("lock_timeout", 86400)),
        Setting("retry", RetryPolicy.immediate(), parse_retry, "retry policy after failures",
                _check_retry),
        Setting("dedup_window", 300.0, _dedup_window, "seconds a dedup key holds, or 'exists'",
                _check_dedup_window),
        Setting("default_ttl", None, _optional_seconds, "time to live of messages, seconds",
                _optional(_check_seconds("ttl", MAX_DELAY))),
        Setting("on_expire", "dead", _on_expire, "'dead' or 'drop' messages past their ttl",
                _check_on_expire),
        Setting("retention", None, _optional_seconds, "keep completed messages, seconds",
                _optional(_check_seconds("retention", 1e12))),
        Setting("retention_max", None, _optional_int, "keep at most this many completed",
                _optional(_check_int("retention_max", 1, 2**62))),
        Setting("max_depth", None, _optional_int, "refuse enqueues past this many messages",
                _optional(_check_int("max_depth", 1, 2**62))),
        Setting("accept_unsigned", False, _bool,
                "with a signing key: deliver messages stored unsigned",
                _check_accept_unsigned),
        Setting("group_commit_max", None, _optional_int,
                "most messages concurrent enqueues share a commit with (1: each alone; "
                "default: 1000 on PostgreSQL, 1 on SQLite)",
                _optional(_check_int("group_commit_max", 1, 1_000_000))),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Resolved:
    """Effective settings and where each came from ("argument", "env", a file, "default")."""

    values: dict[str, Any]
    sources: dict[str, str]


def find_config_file(
    environ: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> tuple[Path, bool] | None:
    """The config file in use and whether it is a pyproject.toml, or None."""
    env = os.environ if environ is None else environ
    explicit = env.get("SQQUEUE_CONFIG")
    if explicit is not None:
        if explicit.strip().lower() in ("", "none", "off"):
            return None
        path = Path(explicit)
        if not path.is_file():
            raise ValueError(f"SQQUEUE_CONFIG points to {explicit!r}, which is not a file")
        return path, path.name == "pyproject.toml"
    base = Path(cwd) if cwd is not None else Path.cwd()
    if (base / "sqqueue.toml").is_file():
        return base / "sqqueue.toml", False
    if (base / "pyproject.toml").is_file():
        return base / "pyproject.toml", True
    return None


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ValueError(
                f"reading {path} needs Python 3.11+ or the tomli package (pip install tomli)"
            ) from None
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc


_file_cache: dict[Path, tuple[float, dict[str, Any]]] = {}


def _file_settings(found: tuple[Path, bool], queue: str | None) -> dict[str, Any]:
    path, is_pyproject = found
    mtime = path.stat().st_mtime
    cached = _file_cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, _load_toml(path))
        _file_cache[path] = cached
    data = cached[1]
    if is_pyproject:
        data = data.get("tool", {}).get("sqqueue", {})
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the sqqueue settings must be a table")
    queues = data.get("queues", {})
    if not isinstance(queues, dict):
        raise ValueError(f"{path}: 'queues' must be a table of per-queue tables")
    values = {k: v for k, v in data.items() if k != "queues"}
    _check_keys(values, str(path))
    for name, table in queues.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [queues.{name}] must be a table")
        _check_keys(table, f"{path} [queues.{name}]")
    effective_queue = queue or values.get("table_name")
    if isinstance(effective_queue, str) and effective_queue in queues:
        values.update(queues[effective_queue])
    return values


#: Secrets never read from the config file, where they would sit in plain text.
_SECRETS = ("encryption_key", "signing_key")


def _check_keys(values: Mapping[str, Any], where: str) -> None:
    secrets = sorted(set(values) & set(_SECRETS))
    if secrets:
        raise ValueError(
            f"{where}: {secrets[0]} is not read from the config file, where it would be "
            f"kept in plain text; name an owner-only key file in SQQUEUE_{secrets[0].upper()}"
            "_FILE instead (see docs/security.md)"
        )
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known settings: "
            f"{', '.join(SETTINGS)}"
        )


#: SQQUEUE_* variables that are not queue settings: the config file's path and the
#: dashboard's login token. ``SQQUEUE_TEST_*`` variables belong to sqqueue's own test suite.
OTHER_VARIABLES = (
    "SQQUEUE_CONFIG",
    "SQQUEUE_DASHBOARD_TOKEN",
    "SQQUEUE_ENCRYPTION_KEY",
    "SQQUEUE_ENCRYPTION_KEY_FILE",
    "SQQUEUE_SIGNING_KEY",
    "SQQUEUE_SIGNING_KEY_FILE",
)
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Log a warning, once per name, for each ``SQQUEUE_*`` variable sqqueue does not
    read: a misspelt setting would otherwise be ignored without a word."""
    known = [f"SQQUEUE_{name.upper()}" for name in SETTINGS] + ["SQQUEUE_CONFIG"]
    for key in env:
        if not key.startswith("SQQUEUE_") or key in known or key in OTHER_VARIABLES:
            continue
        if key.startswith("SQQUEUE_TEST_"):
            continue
        with _warned_lock:
            if key in _warned:
                continue
            _warned.add(key)
        # Compared without the common prefix, which would make every name look close.
        close = difflib.get_close_matches(key[8:], [k[8:] for k in known], n=1)
        hint = f"did you mean SQQUEUE_{close[0]}?" if close else f"known: {', '.join(known)}"
        logger.warning(
            "environment variable %s is not a sqqueue setting and is ignored; %s", key, hint
        )


def resolve(
    explicit: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Resolved:
    """Merge arguments (values that are not ``UNSET``), environment, file and defaults."""
    env = os.environ if environ is None else environ
    _warn_unknown_variables(env)
    given = {k: v for k, v in explicit.items() if v is not UNSET}
    _check_keys(given, "arguments")
    found = find_config_file(env, cwd)
    hint = given.get("table_name") or env.get("SQQUEUE_TABLE_NAME")
    queue_hint = hint if isinstance(hint, str) else None
    from_file = _file_settings(found, queue_hint) if found is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, setting in SETTINGS.items():
        env_key = f"SQQUEUE_{name.upper()}"
        if name in given:
            raw, source = given[name], "argument"
            values[name] = raw  # arguments are checked by the constructor itself
            sources[name] = source
            continue
        if env_key in env:
            raw, source = env[env_key], f"env {env_key}"
        elif name in from_file:
            raw, source = from_file[name], f"file {found[0] if found else ''}"
        else:
            values[name], sources[name] = setting.default, "default"
            continue
        try:
            values[name] = setting.parse(raw)
        except ValueError as exc:
            raise ValueError(f"bad value for {name} from {source}: {exc}") from None
        sources[name] = source
    return Resolved(values, sources)


class Settings(Mapping[str, Any]):
    """A queue's settings, resolved and checked once: ``settings["name"]`` is the value as
    given (argument, environment, file or default), ``settings.name`` the value the queue
    uses (checked, durations in seconds), ``settings.sources["name"]`` where it came from.
    Frozen: change a queue's settings by opening it again."""

    __slots__ = ("_checked", "_given", "sources")

    def __init__(self, given: dict[str, Any], checked: dict[str, Any], sources: dict[str, str]):
        object.__setattr__(self, "_given", MappingProxyType(given))
        object.__setattr__(self, "_checked", MappingProxyType(checked))
        object.__setattr__(self, "sources", MappingProxyType(sources))

    def __getitem__(self, name: str) -> Any:
        return self._given[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._given)

    def __len__(self) -> int:
        return len(self._given)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._checked[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("settings are frozen; open the queue again to change them")

    def __repr__(self) -> str:
        return f"Settings({dict(self._given)!r})"


def _closest(name: str) -> str:
    close = difflib.get_close_matches(name, list(SETTINGS), n=1)
    return f"; did you mean {close[0]}?" if close else f"; known settings: {', '.join(SETTINGS)}"


def load(
    explicit: Mapping[str, Any], backend: str, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings of a queue on ``backend`` ("sqlite" or "postgresql"): arguments (not
    ``UNSET``) over environment over file over defaults, each checked once. Raises
    ValueError naming what to fix: an unknown argument (and the closest known name), one
    that does not apply to the backend (and why), or a bad value."""
    for name, value in explicit.items():
        if value is UNSET:
            continue
        row = SETTINGS.get(name)
        if row is None:
            raise ValueError(f"unknown setting {name!r}{_closest(name)}")
        if backend not in row.backends:
            label = "PostgreSQL" if backend == "postgresql" else "SQLite"
            raise ValueError(
                f"{name} does not apply to {label}: {row.elsewhere}; remove it from the arguments"
            )
    resolved = resolve(explicit, environ)
    checked: dict[str, Any] = {}
    for name, row in SETTINGS.items():
        value = resolved.values[name]
        if row.check is not None and backend in row.backends:
            try:
                value = row.check(value)
            except QueueError as exc:
                raise ValueError(str(exc)) from None
        checked[name] = value
    if checked["statsd_host"] is not None:
        try:
            bounded_int(checked["statsd_port"], "statsd_port", 1, 65535)
        except QueueError as exc:
            raise ValueError(str(exc)) from None
    return Settings(resolved.values, checked, resolved.sources)
