"""What a target names: an SQLite file or a PostgreSQL database.

Commands and helpers that accept "a database" take a path (``jobs.db``), an SQLite URL
(``sqlite:///jobs.db``, ``sqlite:////var/lib/app/jobs.db``) or a PostgreSQL URL
(``postgresql://app@db.internal/app``); this is the one place that tells them apart, and
the one place that knows where such a string keeps its secrets (see :func:`redact`).
"""

from __future__ import annotations

import difflib
import os
import re
import urllib.parse
from typing import Literal, NamedTuple

__all__ = [
    "Target",
    "hide_password",
    "parse_target",
    "postgres_url",
    "redact",
    "refuse_keyword_value",
]


class Target(NamedTuple):
    kind: Literal["sqlite", "postgresql"]
    #: the file path for SQLite (``:memory:`` allowed), the URL for PostgreSQL
    location: str


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_SCHEME_WORDS = ("sqlite", "postgres", "postgresql", "file")
_POSTGRES = ("postgresql://", "postgres://")
_USAGE = (
    "use a file path, sqlite:///path/to/file.db or postgresql://user@host/db "
    "(for a file whose name has a ':', write ./name)"
)

#: The parameters (of a URL, or keywords of a key/value string) whose value is a secret:
#: the password, and the passphrase of the client's TLS key. sslkey, sslcert and passfile
#: name files: a path is no secret, and showing it helps.
_SECRET_KEYS = frozenset({"password", "sslpassword"})

#: libpq's connection keywords (its documentation's "Parameter Key Words"): a target that
#: starts with one and '=' is a key/value connection string, not a file name.
_LIBPQ_KEYWORDS = frozenset(
    {
        *("host", "hostaddr", "port", "dbname", "user", "password", "passfile", "service"),
        *("require_auth", "channel_binding", "connect_timeout", "client_encoding", "options"),
        *("application_name", "fallback_application_name", "replication", "gssencmode"),
        *("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"),
        *("tcp_user_timeout", "sslmode", "sslnegotiation", "sslcompression", "sslcert"),
        *("sslkey", "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir"),
        *("sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version"),
        *("krbsrvname", "gsslib", "gssdelegation", "target_session_attrs"),
        "load_balance_hosts",
    }
)
_FIRST_KEYWORD = re.compile(r"^\s*([A-Za-z_]+)\s*=")
# One ``keyword = value`` of a key/value string: a value is quoted ('...', with \' and
# \\ escapes; an unterminated one runs to the end) or runs to the next space.
_PAIR = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)", re.DOTALL)


def parse_target(target: str | os.PathLike[str]) -> Target:
    """Split a target into its backend and location; ``ValueError`` says what is wrong
    (naming the target without its password)."""
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise ValueError(
            "expected a database: a file path, an sqlite:///path URL or a postgresql:// URL, "
            f"got {target!r}"
        )
    url = _normalized_url(target)
    if url.startswith(_POSTGRES):
        return Target("postgresql", url)
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ValueError(
                f"bad SQLite URL {target!r}: use sqlite:///relative.db or sqlite:////absolute.db"
            )
        return Target("sqlite", rest[1:] or ":memory:")
    if _SCHEME.match(url) or url.lower() in _SCHEME_WORDS:
        raise ValueError(f"unsupported URL {redact(target)!r}: {_scheme_hint(url)}{_USAGE}")
    refuse_keyword_value(target)
    return Target("sqlite", target)


def postgres_url(url: object) -> str:
    """``url`` as libpq takes it, if it is a PostgreSQL URL (see :func:`parse_target`);
    else ``ValueError``, which says what a PostgreSQL URL looks like."""
    if isinstance(url, str):
        target = parse_target(url)  # (its own error for a mistyped URL or key/value string)
        if target.kind == "postgresql":
            return target.location
        url = redact(url)
    raise ValueError(f"url must be a postgresql:// URL, got {url!r}")


def _normalized_url(target: str) -> str:
    """``target`` with the scheme of a URL lowercased and the spaces around it removed; a
    file path unchanged.

    Schemes are case-insensitive (RFC 3986) but libpq only takes ``postgresql://`` and
    ``postgres://`` in lowercase; and spaces or a newline around a URL (read from a file
    or an environment variable) are not part of it. A file name may start or end with a
    space, so a string that is no URL is left as typed.
    """
    text = target.strip()
    match = _SCHEME.match(text)
    if match is None:
        return target
    return match.group().lower() + text[match.end() :]


def _scheme_hint(url: str) -> str:
    """What the scheme of an unsupported URL was probably meant to be, if anything."""
    scheme = url.partition(":")[0].lower()
    driver = scheme.partition("+")[0]
    if driver in ("postgresql", "postgres"):
        if driver == scheme:
            return f"write {scheme}:// (with two slashes); "
        # SQLAlchemy's form (postgresql+psycopg://) names a driver; libpq's does not.
        return f"write {driver}://, not {scheme}://; "
    close = difflib.get_close_matches(scheme, ("postgresql", "sqlite"), n=1, cutoff=0.75)
    return f"did you mean {close[0]}://? " if close else ""


def refuse_keyword_value(target: object) -> None:
    """``ValueError`` for a libpq key/value connection string (``host=db dbname=app``),
    which is no file name: rather than create a file named after it (its password
    included), say how to write it as the URL sqqueue takes. Anything else passes (what
    is no path is for the caller to refuse)."""
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str) or not _is_keyword_value(target):
        return
    url = _as_url(target)
    fill = " (with the password, percent-encoded, in place of ***)" if "***" in url else ""
    raise ValueError(
        f"a PostgreSQL target must be a postgresql:// URL, not key=value settings "
        f"({redact(target)!r}): write {url}{fill}; for a file with such a name, write ./name"
    )


def _is_keyword_value(target: str) -> bool:
    """Whether ``target`` starts with a libpq keyword and '=' (narrowly: a file name with
    a '=' elsewhere, or another word before it, is still a file name)."""
    match = _FIRST_KEYWORD.match(target)
    return match is not None and match.group(1).lower() in _LIBPQ_KEYWORDS


def _pairs(text: str) -> dict[str, str]:
    """The keywords (lowercased) and values (unquoted) of a key/value string."""
    return {m.group(1).lower(): _unquoted(m.group(2)) for m in _PAIR.finditer(text)}


def _unquoted(value: str) -> str:
    """A key/value string's value as libpq reads it: without quotes and escapes."""
    if value.startswith("'"):
        value = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
    return re.sub(r"\\(.)", r"\1", value, flags=re.DOTALL)


def _as_url(target: str) -> str:
    """The key/value string ``target`` written as a postgresql:// URL, secrets masked."""
    pairs = _pairs(target)
    quote = urllib.parse.quote

    def part(key: str, before: str = "", after: str = "") -> str:
        value = pairs.pop(key, None)
        return "" if value is None else f"{before}{quote(value, safe='')}{after}"

    user = part("user") + part("password", ":")
    host = pairs.get("host", "")
    # A socket directory or an IPv6 address goes in a parameter, not before the path.
    host = "" if "/" in host or ":" in host else part("host")
    netloc = (f"{user}@" if user else "") + host + part("port", ":")
    path = part("dbname", "/")
    query = urllib.parse.urlencode(pairs, safe="/", quote_via=quote)  # (what is left)
    return redact(f"postgresql://{netloc}{path}" + (f"?{query}" if query else ""))


def redact(target: str) -> str:
    """The target as messages and logs may show it: the password of a URL (in its user
    part or a ``password=`` or ``sslpassword=`` parameter), or of a libpq key/value
    string, becomes ``***``; anything else (a file path) is unchanged."""
    return _masked(target)[0]


def hide_password(text: str, target: str) -> str:
    """``text`` (a driver's error, say) with every secret of the URL ``target`` (its
    password, an ``sslpassword``) replaced by ``***`` wherever it appears, as typed or as
    decoded."""
    forms = {form for secret in _masked(target)[1] for form in _forms(secret) if form}
    for form in sorted(forms, key=len, reverse=True):  # (a secret inside another: after)
        text = text.replace(form, "***")
    return text


def _forms(secret: str) -> set[str]:
    """A secret as a message may quote it: as typed, percent-decoded, and (libpq ends
    the user part at the first '@', taking the rest for the host) each part of it
    around an '@' (but a character or two: masking those would garble the message)."""
    forms = {secret, urllib.parse.unquote(secret)}
    forms |= {part for form in list(forms) for part in form.split("@") if len(part) > 2}
    return forms


def _masked(target: str) -> tuple[str, list[str]]:
    """``target`` with its secrets replaced by ``***``, and those secrets as typed."""
    if _is_keyword_value(target):
        return _masked_keyword_value(target)
    scheme = _SCHEME.match(target.lstrip())
    if scheme is None:
        return target, []
    head = len(target) - len(target.lstrip()) + scheme.end()
    rest, secrets = _masked_user(target[head:])
    path, mark, query = rest.partition("?")
    if mark:
        query, found = _masked_params(query)
        secrets += found
    return target[:head] + path + mark + query, secrets


def _masked_user(rest: str) -> tuple[str, list[str]]:
    """The part of a URL after its scheme with the password of its user part masked.

    libpq ends the user part at the first '@' before any '/', so a password may hold a '?'
    or a '#' (which urllib.parse would cut it at); the last such '@' is taken here, so a
    password holding an '@' (that libpq would cut) is masked whole too.
    """
    slashes = 2 if rest.startswith("//") else 0  # (a third is the path's: sqlite:///x)
    authority = rest[slashes:].partition("/")[0]
    user, at, _host = authority.rpartition("@")
    name, colon, password = user.partition(":")
    if not (at and colon):
        return rest, []
    return f"{rest[:slashes]}{name}:***{rest[slashes + len(user) :]}", [password]


def _masked_params(query: str) -> tuple[str, list[str]]:
    """A URL's parameters with the values of the secret ones masked (libpq decodes a
    parameter's name too: ``pass%77ord`` is the password)."""
    params, secrets = [], []
    for param in query.split("&"):
        key, eq, value = param.partition("=")
        secret = bool(eq) and urllib.parse.unquote(key).strip().lower() in _SECRET_KEYS
        if secret:
            secrets.append(value)
        params.append(f"{key}=***" if secret else param)
    return "&".join(params), secrets


def _masked_keyword_value(text: str) -> tuple[str, list[str]]:
    """A key/value string with the values of its secret keywords masked."""
    secrets: list[str] = []

    def mask(match: re.Match[str]) -> str:
        if match.group(1).lower() not in _SECRET_KEYS:
            return match.group()
        secrets.extend({match.group(2), _unquoted(match.group(2))})
        start = match.start(2) - match.start()
        return match.group()[:start] + "***"

    return _PAIR.sub(mask, text), secrets
