"""``sqqueue dashboard``: serve the dashboard with uvicorn, safely by default.

* It listens on 127.0.0.1 unless told otherwise, and refuses any other address unless a
  token is configured (``SQQUEUE_DASHBOARD_TOKEN`` or ``--token-file``): a token made up
  at start is only for the machine's own loopback.
* A token made up at start is printed once, to the terminal that started the server, and
  nowhere else.
* It answers only requests whose ``Host`` header names the address it serves (against DNS
  rebinding), and takes the client's address from the connection, never from headers a
  client may forge (``X-Forwarded-For``): the login throttle counts real peers.
* It speaks plain HTTP: on an address other than loopback it warns at start (on its
  output and as a WARNING in the log) that the token and the session cookie cross the
  network in clear. It ignores ``X-Forwarded-Proto`` too, so behind a proxy that ends TLS
  ``secure_cookies=True`` (``--secure-cookies``) is what makes the cookies Secure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from .. import list_queues
from ..encryption import read_secret_file
from .app import TOKEN_ENV, create_app
from .auth import generate_token
from .web import shown_target

__all__ = ["DashboardError", "allowed_hosts", "is_loopback", "resolve_token", "serve"]

logger = logging.getLogger(__name__)


class DashboardError(Exception):
    """The dashboard cannot start: what is wrong, and an exit code (1 failed, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    try:
        return bool(addresses) and all(
            ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
        )
    except ValueError:
        return False


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> list[str]:
    """The ``Host`` header values the dashboard served on ``host``:``port`` answers: that
    address, and on the loopback also 127.0.0.1, localhost and [::1], each with the port
    (and without it on port 80, as browsers send it); plus ``extra`` as given (the names
    a proxy in front forwards, ``--allow-host``)."""
    names = {host.strip("[]")}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "::1"}
    shown = {f"[{name}]" if ":" in name else name for name in names}
    found = {f"{name}:{port}" for name in shown}
    if port == 80:
        found |= shown
    return sorted(found | {name.strip().lower() for name in extra if name.strip()})


def resolve_token(token_file: str | None) -> tuple[str, bool]:
    """The token to use and whether it was made up now: from ``token_file``, else from
    ``$SQQUEUE_DASHBOARD_TOKEN``, else a new random one."""
    if token_file is not None:
        # A secret, read as key files are: only its owner may read it.
        try:
            token = read_secret_file(token_file, "token file").strip()
        except ValueError as exc:
            raise DashboardError(str(exc), 2) from None
        if not token:
            raise DashboardError(f"the token file {token_file!r} is empty", 2)
        return token, False
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token, False
    return generate_token(), True


def serve(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8844,
    read_only: bool = False,
    token_file: str | None = None,
    schema: str | None = None,
    allow_hosts: Iterable[str] = (),
    secure_cookies: bool | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve the dashboard of ``target`` until Ctrl-C or SIGTERM; raises DashboardError.

    ``allow_hosts``: more ``Host`` header values to answer than the address served.
    ``secure_cookies``: as :func:`create_app` takes it (True behind a proxy that ends
    TLS: the requests it forwards come by http)."""
    import uvicorn

    out = out or sys.stdout
    token, generated = resolve_token(token_file)
    if generated and not is_loopback(host):
        raise DashboardError(
            f"refusing to listen on {host}, which is not a loopback address, without a "
            f"configured token: set {TOKEN_ENV} or pass --token-file (a token made up at "
            "start is only for 127.0.0.1)",
            2,
        )
    found = list_queues(target, schema=schema)
    if found.is_err():
        raise DashboardError(str(found.error))
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    # Bound first: with --port 0, the Host headers to answer carry the port picked.
    hosts = allowed_hosts(host, bound, allow_hosts)
    try:
        app = create_app(
            target,
            token=token,
            read_only=read_only,
            schema=schema,
            allowed_hosts=hosts,
            secure_cookies=secure_cookies,
        )
    except ValueError as exc:
        sock.close()
        raise DashboardError(str(exc), 2) from None
    shown_host = f"[{host}]" if ":" in host else host
    lines = [f"sqqueue dashboard of {shown_target(target)} at http://{shown_host}:{bound}/"]
    if read_only:
        lines.append("read-only: every action is hidden and refused")
    if generated:
        lines.append(f"log in with this token (shown only now): {token}")
    if not is_loopback(host):
        lines.append(
            "warning: plain HTTP on a non-loopback address: the token and the session cookie "
            "cross the network in clear; put it behind a TLS proxy (and pass --secure-cookies)"
        )
        lines.append(f"answering the Host header values {', '.join(hosts)} (more: --allow-host)")
        # In the log too, where a service manager keeps it (the address only, no secret).
        logger.warning(
            "dashboard: serving plain HTTP on %s, which is not a loopback address: the token "
            "typed at login and the session cookie cross the network in clear unless a TLS "
            "proxy is in front (then pass --secure-cookies)",
            shown_host,
        )
    lines.append("Ctrl-C to stop")
    out.write("\n".join(lines) + "\n")
    out.flush()
    # No proxy headers: uvicorn would otherwise take the client's address from
    # X-Forwarded-For when the peer is 127.0.0.1, so anyone on the machine (or a proxy
    # passing the header through) could spoof it and slip past the login throttle.
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        forwarded_allow_ips=[],
    )
    server = _server_class()(config)
    try:
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, ending with status 0 on SIGTERM or Ctrl-C (a clean stop, as
        the other sqqueue commands do) instead of re-raising the signal."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            stops = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
