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
    "age",
    "chart",
    "json_default",
    "message_view",
    "one_line",
    "payload_text",
    "size",
    "when",
]

CHART_WIDTH, CHART_HEIGHT = 240, 48
PAYLOAD_PAGE_LIMIT = 256 * 1024  # characters of a payload shown on its page
BYTES_SHOWN = 4096  # bytes of a binary payload shown as hex


def when(value: datetime | float | None) -> str:
    """ISO-8601 in UTC to the second: ``2026-01-31 09:15:00Z``; ``-`` for none."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(float(value), tz=timezone.utc)
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
        text = f"<{len(bytes(payload)):,} bytes>"
    elif isinstance(payload, str):
        text = payload
    else:
        try:
            text = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(payload)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
    of them."""
    factors = {"minutes": 60.0, "hours": 3600.0, "days": 86400.0}
    if unit not in factors:
        raise ValueError(f"unit must be minutes, hours or days, got {unit!r}")
    value = float(number)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a number of {unit} of 0 or more, got {number!r}")
    return value * factors[unit]
