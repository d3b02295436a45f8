"""PostgreSQL URLs libpq refuses, and servers that do not answer: clear errors, in time,
never showing the password."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import sqqueue
from sqqueue.backends import postgres

SECRET = "my SECRET pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:9/app",
        f"postgresql://app@127.0.0.1:9/app?password={SECRET}",
        "postgresql://app:pw@127.0.0.1:9/app?bogus=1",
        "postgresql://app:pw@127.0.0.1:9/app?connect_timeout=abc",
    ],
)
def test_a_url_libpq_refuses_is_a_value_error_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="invalid PostgreSQL URL") as raised:
        sqqueue.connect(url, "jobs")
    assert SECRET not in str(raised.value)
    listed = sqqueue.list_queues(url)
    assert listed.is_err()
    assert SECRET not in str(listed.error)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server, a black hole)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_listing_the_queues_of_a_server_that_does_not_answer_gives_up(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "_LIST_CONNECT_TIMEOUT", 1)
    started = time.monotonic()
    secret = "s3cret-pw"
    listed = sqqueue.list_queues(f"postgresql://app:{secret}@127.0.0.1:{silent_server}/app")
    assert listed.is_err()
    assert time.monotonic() - started < 15  # (not the hang it was)
    assert "timeout" in str(listed.error), listed.error
    assert secret not in str(listed.error)
