"""How values look on the pages and in the JSON API: times, ages, sizes, payloads, charts.

Everything here returns plain text or numbers; the templates escape it (autoescape), and
the JavaScript only ever sets ``textContent`` and SVG attributes from the JSON API.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from typing import Any

from . import states

__all__ = [
    "CHART_HEIGHT",
    "CHART_WIDTH",
    "MAX_OLDER_THAN",
    "MAX_RATE",
    "age",
    "chart",
    "json_default",
    "message_view",
    "older_than",
    "one_line",
    "payload_text",
    "rate",
    "seconds_from",
    "size",
    "when",
]

CHART_WIDTH, CHART_HEIGHT = 240, 48
PAYLOAD_PAGE_LIMIT = 256 * 1024  # characters of a payload shown on its page
BYTES_SHOWN = 4096  # bytes of a binary payload shown as hex
#: the longest "older than" a purge takes, in seconds: 100 years (anything longer would
#: keep every dead letter anyway, and the library refuses absurd ages)
MAX_OLDER_THAN = 100 * 365.25 * 86400
#: the fastest redrive rate, messages per second (the library's own upper bound)
MAX_RATE = 1e9


def when(value: datetime | float | str | None) -> str:
    """ISO-8601 in UTC to the second: ``2026-01-31 09:15:00Z``; ``-`` for none.

    A stored time the library cannot read comes as its marker text (``<invalid: 1e+300>``)
    and is shown as is: one damaged row must not take the whole page down."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        try:
            value = datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError):
            return f"<invalid: {value!r}>"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    """A duration for people: ``0.4 s``, ``12 s``, ``5 min``, ``3.2 h``, ``4.1 d``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def json_default(value: Any) -> Any:
    """JSON for what messages hold: datetimes as ISO-8601, bytes as ``{"$bytes": base64}``
    (the convention of ``sqqueue ... --json``)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot represent {type(value).__name__} as JSON")


def payload_text(payload: Any) -> tuple[str, str]:
    """(kind, text) of a payload for its page: JSON pretty-printed, text as it is, bytes
    as a hex dump of their start."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        lines = []
        for offset in range(0, min(len(data), BYTES_SHOWN), 16):
            chunk = data[offset : offset + 16]
            printable = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {printable}")
        if len(data) > BYTES_SHOWN:
            lines.append(f"... {len(data) - BYTES_SHOWN:,} more bytes")
        return f"bytes ({len(data):,})", "\n".join(lines)
    if isinstance(payload, str):
        return "text", _clip_page(payload)
    try:
        text = json.dumps(payload, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return "value", _clip_page(repr(payload))
    return "JSON", _clip_page(text)


def _clip_page(text: str) -> str:
    if len(text) <= PAYLOAD_PAGE_LIMIT:
        return text
    return text[:PAYLOAD_PAGE_LIMIT] + f"\n... {len(text) - PAYLOAD_PAGE_LIMIT:,} more characters"


def one_line(payload: Any, width: int = 100) -> str:
    """A payload on one line, clipped, for lists."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        count = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        text = f"<{count:,} bytes>"
    elif isinstance(payload, str):
        text = payload
    else:
        try:
            text = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(payload)
    # Clip before normalising the whitespace: a list of 50 payloads of megabytes each
    # must not split every one of them whole to show a hundred characters.
    prefix = width * 4
    clipped = len(text) > prefix
    text = " ".join(text[:prefix].split())
    if len(text) > width:
        return text[: width - 1] + "…"
    return text + "…" if clipped else text


def message_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A message dict from the library with the dashboard's state label (``status``:
    ready rather than pending)."""
    view = dict(entry)
    status = entry.get("status")
    state = next((s for s in states.STATES if s.library == status), None)
    view["status"] = state.label if state is not None else status
    return view


def chart(buckets: list[dict[str, Any]]) -> dict[str, Any]:
    """SVG geometry of a chart of events per minute: one polyline per series (a list of
    runs of points, broken where there is no data), and the top of the scale."""
    series = ("enqueued", "completed", "failed")
    top = max([1] + [row[name] for row in buckets for name in series if row[name] is not None])
    count = max(len(buckets) - 1, 1)
    lines: dict[str, list[str]] = {}
    for name in series:
        runs: list[str] = []
        run: list[tuple[float, float]] = []
        for index, row in enumerate(buckets):
            value = row[name]
            if value is None:
                if run:
                    runs.append(_run(run))
                    run = []
                continue
            x = index * CHART_WIDTH / count
            y = CHART_HEIGHT - 2 - (CHART_HEIGHT - 4) * value / top
            run.append((x, y))
        if run:
            runs.append(_run(run))
        lines[name] = runs
    last = next(
        (row for row in reversed(buckets) if row["enqueued"] is not None),
        None,
    )
    return {
        "top": top,
        "lines": lines,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "last": last,
        "empty": all(not runs for runs in lines.values()),
        "nice_top": _nice(top),
    }


def _run(points: list[tuple[float, float]]) -> str:
    """SVG polyline points; a lone point becomes a short dash, so it shows."""
    if len(points) == 1:
        x, y = points[0]
        points = [(x - 3, y), (x, y)]
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _nice(value: int) -> str:
    return f"{value:,}" if value < 10_000 else f"{value / 1000:.0f}k"


def seconds_from(number: str, unit: str) -> float:
    """``number`` ``unit`` (minutes, hours, days) in seconds; ValueError if not a number
    of them, or more than :data:`MAX_OLDER_THAN` seconds in all."""
    factors = {"minutes": 60.0, "hours": 3600.0, "days": 86400.0}
    if unit not in factors:
        raise ValueError(f"unit must be minutes, hours or days, got {unit!r}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a number of {unit}, got {number!r}") from None
    # Checked after multiplying: 1e308 days is a finite number of days but not of seconds.
    return older_than(value * factors[unit], f"{number} {unit}")


def older_than(seconds: Any, shown: str | None = None) -> float:
    """``seconds`` as the age of a purge: a number from 0 to :data:`MAX_OLDER_THAN`;
    ValueError saying the allowed range otherwise (``shown``: how the user wrote it)."""
    if (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or not 0 <= seconds <= MAX_OLDER_THAN
    ):
        given = shown if shown is not None else repr(seconds)
        raise ValueError(
            f"older than must be from 0 seconds to 100 years ({MAX_OLDER_THAN:.0f} seconds), "
            f"got {given}"
        )
    return float(seconds)


def rate(value: Any) -> float:
    """``value`` as a redrive rate: messages per second above 0, at most :data:`MAX_RATE`;
    ValueError saying the allowed range otherwise."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_RATE
    ):
        raise ValueError(
            f"the rate must be a number of messages per second above 0 and at most "
            f"{MAX_RATE:.0f}, got {value!r}"
        )
    return float(value)
