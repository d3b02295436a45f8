"""Settings from arguments, ``SQQUEUE_*`` environment variables and a TOML file: the
names the command line and older code import. The table and its resolution live in
:mod:`sqqueue.settings`."""

from __future__ import annotations

from .settings import (
    OTHER_VARIABLES,
    SETTINGS,
    UNSET,
    Resolved,
    Setting,
    find_config_file,
    load,
    parse_retry,
    resolve,
)

__all__ = [
    "OTHER_VARIABLES",
    "SETTINGS",
    "UNSET",
    "Resolved",
    "Setting",
    "find_config_file",
    "load",
    "parse_retry",
    "resolve",
]
