"""The execution ledger: an append-only file outside the Redis under test.

Every handler execution appends one JSON line with ``os.write`` on a descriptor opened
with ``O_APPEND``: each line is one ``write(2)`` well under ``PIPE_BUF``, so lines from
several processes never interleave, and a line written just before ``os._exit`` or a
SIGKILL is already in the kernel's page cache (it survives the process).

Kept free of pytest so the worker apps (subprocesses) can import it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["Ledger"]

_MAX_LINE = 3500  # well under PIPE_BUF (4096): one write(2) is one whole line


class Ledger:
    """Append-only JSON-lines record of handler executions, shared by processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<Ledger {str(self.path)!r}>"

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def record(self, mid: str, ev: str, **fields: Any) -> None:
        """Append one event (``ev``: start, done, error, ...) of message ``mid``."""
        item = {"mid": mid, "ev": ev, "pid": os.getpid(), "t": time.time(), **fields}
        line = json.dumps(item, separators=(",", ":"), default=str)
        if len(line) > _MAX_LINE:
            line = json.dumps({**item, **dict.fromkeys(fields, "<truncated>")}, default=str)
        os.write(self._open(), line.encode() + b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading ---------------------------------------------------------------------------

    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        """Every complete line (a torn last line of a killed writer cannot happen, but is
        skipped if it did), optionally only those of one kind."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if not line:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if ev is None or item.get("ev") == ev:
                out.append(item)
        return out

    def counts(self, ev: str = "done") -> Counter[str]:
        """How many ``ev`` events each message has."""
        return Counter(e["mid"] for e in self.events(ev))

    def in_flight(self, pid: int | None = None) -> set[str]:
        """Messages started (by ``pid``, if given) and not done by the same process."""
        started: Counter[str] = Counter()
        for e in self.events():
            if pid is not None and e["pid"] != pid:
                continue
            if e["ev"] == "start":
                started[e["mid"]] += 1
            elif e["ev"] == "done":
                started[e["mid"]] -= 1
        return {mid for mid, n in started.items() if n > 0}
