"""MkDocs hook: the generated parts of the reference pages.

A page asks for a table with a line ``<!-- generated: NAME -->``; the hook replaces it with
the Markdown below, built from the code itself, so the pages cannot drift from it:

- ``settings``: every queue setting, from the one table that defines them;
- ``cli``: every command's ``--help``, walking the click group the ``sqqueue`` console
  script runs (found through its entry point, wherever the group lives);
- ``error-kinds``: every ``ErrorKind`` with its meaning (the comment beside it in the
  source) and what to do about it (``ADVICE`` below: a kind without advice fails the build).

Only these few imports know where things live; if a refactor moves them, change them here.
"""

from __future__ import annotations

import inspect
import re
from importlib.metadata import entry_points
from typing import Any

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)

# What to do when a call returns Err of each kind.
ADVICE = {
    "INVALID_INPUT": "Fix the argument the message names; retrying the same call fails the same way.",
    "SERIALIZATION": "Convert the payload to `str`, `bytes` or plain JSON values (the message says which part), or pass a `serializer`.",
    "NOT_FOUND": "The message was completed, purged or never existed: nothing to do for it. For a queue or file, check the name or path.",
    "WRONG_STATE": "The message is not leased by you (pending, dead, or already finished by this queue object): do not act on it again.",
    "LEASE_EXPIRED": "Your handler ran past its lease: the message will be delivered again. Lengthen `default_visibility_timeout` or call `extend()` while working.",
    "LEASE_LOST": "Another consumer holds the message now: drop your result, it will finish the work. Make handlers idempotent.",
    "LOCKED": "Another connection held the write lock past `lock_timeout`: retry later, look for a long transaction, or raise `lock_timeout`.",
    "QUEUE_FULL": "The queue holds `max_depth` messages: slow the producer, add consumers, or enqueue with `wait=` to wait for room.",
    "UNKNOWN_OUTCOME": "The connection died while committing: the call may or may not have happened. Check (e.g. `get_message`) or enqueue with a `dedup_key` so a retry is safe.",
    "DISK_FULL": "Free disk space (or raise the file size limit); nothing was written.",
    "READ_ONLY": "The queue was opened with `read_only=True` or the file cannot be written: open it writable, or fix the file's permissions.",
    "CORRUPT": "The database file is damaged: run `sqqueue check`, then `sqqueue salvage` into a new file.",
    "CLOSED": "The queue object was closed: open a new one.",
    "STORAGE": "The database failed otherwise (a server that is down, permissions): the message says which; retry once the cause is fixed.",
}


def _settings() -> str:
    from sqqueue.config import SETTINGS

    rows = [
        "| setting | environment variable | TOML key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, setting in SETTINGS.items():
        shown = getattr(setting.default, "kind", setting.default)  # a RetryPolicy by its kind
        default = "—" if shown is None else f"`{shown!r}`"
        rows.append(
            f"| `{name}` | `SQQUEUE_{name.upper()}` | `{name}` | {default} | {setting.help} |"
        )
    return "\n".join(rows)


def _cli() -> str:
    import click

    (script,) = entry_points(group="console_scripts", name="sqqueue")
    group = script.load()
    parts: list[str] = []

    def walk(command: click.Command, ctx: click.Context) -> None:
        parts.append(f"## `{ctx.command_path}`\n\n```text\n{command.get_help(ctx)}\n```\n")
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, click.Context(sub, info_name=name, parent=ctx, terminal_width=100))

    walk(group, click.Context(group, info_name="sqqueue", terminal_width=100))
    return "\n".join(parts)


def _error_kinds() -> str:
    from sqqueue import ErrorKind

    meaning = dict(
        re.findall(r"^\s*(\w+) = \"\w+\"\s*#:\s*(.+)$", inspect.getsource(ErrorKind), re.M)
    )
    missing = [kind.name for kind in ErrorKind if kind.name not in ADVICE]
    if missing:
        raise ValueError(f"docs/hooks/reference.py: no advice for ErrorKind {missing}")
    rows = ["| kind | `.value` | meaning | what to do |", "| --- | --- | --- | --- |"]
    for kind in ErrorKind:
        rows.append(
            f"| `{kind.name}` | `{kind.value}` | {meaning.get(kind.name, '')} | {ADVICE[kind.name]} |"
        )
    return "\n".join(rows)


GENERATORS = {"settings": _settings, "cli": _cli, "error-kinds": _error_kinds}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    def generate(match: re.Match[str]) -> str:
        return GENERATORS[match.group(1)]()

    return MARKER.sub(generate, markdown)
