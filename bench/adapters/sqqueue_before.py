"""sqqueue as it was before the work on workers and producers: the commit named in
bench/run.py (BEFORE_COMMIT), extracted by run.py and put first on the path. Measured on
the rows users see only, in the same run as the current code, so that "no slower than
before" compares like with like."""

from __future__ import annotations

import re

from .sqqueue_current import Adapter as Current


def source() -> str:
    """Which code this is, from the directory run.py extracted it to."""
    import sqqueue

    found = re.search(r"sqqueue-bench-before-([0-9a-f]+)-", sqqueue.__file__ or "")
    return f"commit {found.group(1)}" if found else "not the extracted commit"


class Adapter(Current):
    name = "sqqueue-before"
    semantics = "sqqueue before the work on workers and producers (same as sqqueue's, then)"

    @classmethod
    def version(cls) -> str:
        import sqqueue

        return f"{sqqueue.__version__} ({source()})"
