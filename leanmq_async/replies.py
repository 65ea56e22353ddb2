"""Script replies as typed values: one parser per script of :mod:`leanmq_async.scripts`.

Each ``parse_<script>`` checks the reply's shape against the contract at the top of
``leanmq_async/lua/<script>.lua`` and returns a typed value, so no caller slices a raw
reply. A reply of the wrong shape (a server running another version of a script) raises
:class:`ScriptReplyError`, naming the script and what was expected.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from leanmq_async.exceptions import LeanMQError
from leanmq_async.message import CancelOutcome, DeadLetterResult
from leanmq_async.priority import level_bid
from leanmq_async.store_types import RawEntry

__all__ = [
    "ClaimResult",
    "CronTickResult",
    "ExpireReadStatus",
    "ExpireResult",
    "MigrateStepResult",
    "MoveDueResult",
    "ReclaimResult",
    "RetryStatus",
    "ScriptReplyError",
    "SendReply",
    "parse_cancel",
    "parse_claim",
    "parse_count",
    "parse_cron_tick",
    "parse_dead_letter",
    "parse_dead_letter_one",
    "parse_defer",
    "parse_delete_idle_consumer",
    "parse_due_scan",
    "parse_expire",
    "parse_expire_read",
    "parse_extend_leases",
    "parse_migrate_step",
    "parse_move_due",
    "parse_pending_scan",
    "parse_rate_limit",
    "parse_reclaim",
    "parse_retry",
    "parse_send",
    "parse_store_failure",
    "parse_store_result",
    "text",
]


class ScriptReplyError(LeanMQError):
    """A script replied in a shape its contract does not allow (a bug, or another version)."""


def text(value: Any) -> str:
    """A Redis reply value (bytes, str or a number) as text; invalid UTF-8 is replaced."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# -- shape checks ---------------------------------------------------------------------------


def _fail(script: str, expected: str, reply: Any) -> ScriptReplyError:
    shown = repr(reply)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return ScriptReplyError(f"script {script} replied {shown}; expected {expected}")


def _int(script: str, value: Any, expected: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int | bytes | str):
        raise _fail(script, expected, value)
    try:
        return int(value)
    except ValueError:
        raise _fail(script, expected, value) from None


def _array(script: str, value: Any, expected: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        raise _fail(script, expected, value)
    return list(value)


def _id(script: str, value: Any, expected: str = "a stream id") -> bytes:
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise _fail(script, expected, value)
    return value


def _pairs(script: str, flat: Any, expected: str) -> list[tuple[Any, Any]]:
    items = _array(script, flat, expected)
    if len(items) % 2:
        raise _fail(script, expected, flat)
    return list(zip(items[::2], items[1::2], strict=True))


def _one_of(script: str, value: int, allowed: type[enum.IntEnum]) -> Any:
    try:
        return allowed(value)
    except ValueError:
        choices = ", ".join(str(int(m)) for m in allowed)
        raise _fail(script, f"one of {choices}", value) from None


# -- send -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendReply:
    """What send.lua wrote: one id per message, and which messages were duplicates.

    ``ids``: a stream id (or delayed member) per message, the first send's for a
    duplicate; ``duplicates``: 0-based positions of the messages deduplicated by their
    ``message_id`` (nothing was written for them).
    """

    ids: list[str]
    duplicates: list[int]


def parse_send(reply: Any, n: int) -> SendReply:
    """send.lua: ``n`` ids, then the 1-based positions of the deduplicated messages."""
    expected = f"an array of {n} stream ids or delayed members, then duplicate positions"
    items = _array("send", reply, expected)
    if len(items) < n:
        raise _fail("send", expected, reply)
    ids = [text(_id("send", i, expected)) for i in items[:n]]
    duplicates = []
    for position in items[n:]:
        if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= n:
            raise _fail("send", expected, reply)
        duplicates.append(position - 1)
    return SendReply(ids, duplicates)


# -- reading and leases ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReclaimResult:
    """What one reclaim step found (reclaim.lua).

    ``entries``: the claimed entries; ``deliveries``: id -> delivery count after the
    claim; ``missing``: pending ids deleted from the stream (acked, to be reported as
    lost); ``next_start``: the next page's start ('' when the scan is done).
    """

    entries: list[RawEntry]
    deliveries: dict[bytes, int]
    missing: list[bytes]
    next_start: str

    def at_level(self, level: int) -> ReclaimResult:
        """The same, its ids named with their priority level (see ``priority.py``)."""
        return ReclaimResult(
            [(level_bid(sid, level), fields) for sid, fields in self.entries],
            {level_bid(sid, level): n for sid, n in self.deliveries.items()},
            [level_bid(sid, level) for sid in self.missing],
            self.next_start,
        )


def parse_reclaim(reply: Any) -> ReclaimResult:
    """reclaim.lua: ``{entries, counts, missing, next}``."""
    expected = "{entries, counts, missing, next}"
    raw_entries, counts, missing, nxt = _array("reclaim", reply, expected, 4)
    entries: list[RawEntry] = []
    for entry in _array("reclaim", raw_entries, "an array of {id, fields} entries"):
        sid, fields = _array("reclaim", entry, "an entry {id, {field, value, ...}}", 2)
        pairs = _pairs("reclaim", fields, "an entry's flat field list")
        entries.append((_id("reclaim", sid), {_id("reclaim", k): v for k, v in pairs}))
    deliveries = {
        _id("reclaim", sid): _int("reclaim", n, "a delivery count")
        for sid, n in _pairs("reclaim", counts, "a flat id, delivery count array")
    }
    lost = [_id("reclaim", i) for i in _array("reclaim", missing, "an array of missing ids")]
    if not isinstance(nxt, bytes | str):
        raise _fail("reclaim", "the next start ('' or '(id')", nxt)
    return ReclaimResult(entries, deliveries, lost, text(nxt))


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What one priority claim took (claim.lua).

    ``entries``: per level stream, in the order the claim read them, the entries claimed;
    ``last_ids``: when nothing was claimed, each stream's last id (where to wait from),
    else empty.
    """

    entries: list[list[RawEntry]]
    last_ids: list[str]


def parse_claim(reply: Any, streams: int) -> ClaimResult:
    """claim.lua: ``{entries of stream 1, ..., entries of stream k, last ids}``."""
    expected = f"{streams} entry arrays and an array of last ids"
    items = _array("claim", reply, expected, streams + 1)
    per_stream: list[list[RawEntry]] = []
    for raw in items[:streams]:
        entries: list[RawEntry] = []
        for entry in _array("claim", raw, "an array of {id, fields} entries"):
            sid, fields = _array("claim", entry, "an entry {id, {field, value, ...}}", 2)
            pairs = _pairs("claim", fields, "an entry's flat field list")
            entries.append((_id("claim", sid), {_id("claim", k): v for k, v in pairs}))
        per_stream.append(entries)
    last = [text(i) for i in _array("claim", items[streams], "an array of last ids")]
    if last and len(last) != streams:
        raise _fail("claim", f"{streams} last ids", items[streams])
    return ClaimResult(per_stream, last)


def parse_extend_leases(reply: Any) -> list[bytes]:
    """extend_leases.lua: the ids whose lease was lost."""
    return [_id("extend_leases", i) for i in _array("extend_leases", reply, "an array of ids")]


def parse_delete_idle_consumer(reply: Any) -> bool:
    """delete_idle_consumer.lua: 1 deleted, 0 kept."""
    value = _int("delete_idle_consumer", reply, "0 or 1")
    if value not in (0, 1):
        raise _fail("delete_idle_consumer", "0 or 1", reply)
    return value == 1


# -- settling -------------------------------------------------------------------------------


class RetryStatus(enum.IntEnum):
    """retry.lua's (and defer.lua's) reply."""

    SCHEDULED = 1
    GONE = 0  # the entry was deleted from the stream: acked, nothing to retry
    NOT_OWNED = -1  # the lease was taken over: nothing done
    CANCELLED = 2  # the message was cancelled: left pending, to be dead-lettered


class ExpireReadStatus(enum.IntEnum):
    """expire_read.lua's reply."""

    SETTLED = 1  # expired: acked, or dead-lettered
    LIVE = 0  # not expired by the Redis clock: handle it
    NOT_OWNED = -1  # expired, but no longer this consumer's: nothing done


def parse_retry(reply: Any) -> RetryStatus:
    """retry.lua: 1, 0, -1 or 2."""
    status: RetryStatus = _one_of("retry", _int("retry", reply), RetryStatus)
    return status


def parse_defer(reply: Any) -> RetryStatus:
    """defer.lua: 1 (deferred), 0, -1 or 2 (cancelled), as retry.lua's."""
    status: RetryStatus = _one_of("defer", _int("defer", reply), RetryStatus)
    return status


def parse_rate_limit(reply: Any, n: int) -> list[int]:
    """rate_limit.lua: ``n`` non-zero integers (ms), each negated when it is now."""
    expected = f"an array of {n} non-zero integers (ms)"
    grants = [_int("rate_limit", g, expected) for g in _array("rate_limit", reply, expected, n)]
    if not all(grants):
        raise _fail("rate_limit", expected, reply)
    return grants


def parse_expire_read(reply: Any) -> ExpireReadStatus:
    """expire_read.lua: 1, 0 or -1."""
    status: ExpireReadStatus = _one_of("expire_read", _int("expire_read", reply), ExpireReadStatus)
    return status


_DEAD_LETTER_STATUSES = frozenset({"moved", "not_owned", "not_pending", "not_found"})


def parse_dead_letter(ids: Sequence[str], reply: Any) -> DeadLetterResult:
    """dead_letter.lua: one status per id, in the order sent."""
    expected = f"an array of {len(ids)} statuses ({', '.join(sorted(_DEAD_LETTER_STATUSES))})"
    result = DeadLetterResult()
    for sid, raw in zip(ids, _array("dead_letter", reply, expected, len(ids)), strict=True):
        status = text(raw) if isinstance(raw, bytes | str) else ""
        if status not in _DEAD_LETTER_STATUSES:
            raise _fail("dead_letter", expected, reply)
        if status == "moved":
            result.moved.append(sid)
        else:
            result.not_moved[sid] = status
    return result


def parse_dead_letter_one(sid: str, reply: Any) -> int:
    """dead_letter.lua for one id, as a settle result: 1 moved, 0 not."""
    return parse_dead_letter([sid], reply).count


def parse_store_result(reply: Any) -> int:
    """store_result.lua: XACK's count, 1 acked now or 0 acked already (stored either way)."""
    value = _int("store_result", reply, "0 or 1")
    if value not in (0, 1):
        raise _fail("store_result", "0 or 1", reply)
    return value


def parse_store_failure(reply: Any) -> int:
    """store_failure.lua: 1 stored, 0 not (the consumer does not hold the entry)."""
    value = _int("store_failure", reply, "0 or 1")
    if value not in (0, 1):
        raise _fail("store_failure", "0 or 1", reply)
    return value


# -- queue upkeep ---------------------------------------------------------------------------


class MoveDueResult(NamedTuple):
    """move_due.lua: entries moved, and ms until the next delayed entry is due (-1: none)."""

    moved: int
    next_due_ms: int


def parse_move_due(reply: Any) -> MoveDueResult:
    """move_due.lua: ``{moved, wait}``."""
    moved, wait = _array("move_due", reply, "{moved, wait}", 2)
    return MoveDueResult(_int("move_due", moved), _int("move_due", wait))


def parse_due_scan(reply: Any, keys: int) -> tuple[int, list[int]]:
    """due_scan.lua: ``{next, i1, ...}``: ms until the soonest key not yet due (-1: none),
    and the 0-based positions of the keys due now (each in ``1..keys`` in the reply)."""
    expected = f"[next ms, positions 1..{keys} of the keys due]"
    if not isinstance(reply, list) or not reply:
        raise _fail("due_scan", expected, reply)
    values = [_int("due_scan", v, expected) for v in reply]
    due = [v - 1 for v in values[1:]]
    if values[0] < -1 or values[0] == 0 or any(not 0 <= i < keys for i in due):
        raise _fail("due_scan", expected, reply)
    return values[0], due


def parse_pending_scan(reply: Any, keys: int) -> list[bool]:
    """pending_scan.lua: one 0/1 per key (1: an entry idle past the lease)."""
    values = _array("pending_scan", reply, "one 0/1 per key", keys)
    return [_int("pending_scan", v) == 1 for v in values]


@dataclass(frozen=True, slots=True)
class ExpireResult:
    """What one expiry batch (expire.lua) did.

    ``scanned``: index members looked at (equal to the limit: more may be due);
    ``removed``: entries deleted; ``unhandled``: entries that expired unhandled for at
    least one group; ``rechecked``: entries pending in a group, left to their consumer
    and looked at again later; ``left``: index members still due after the batch
    (counted up to the batch's limit).
    """

    scanned: int
    removed: int
    unhandled: int
    rechecked: int
    left: int


def parse_expire(reply: Any) -> ExpireResult:
    """expire.lua: ``{scanned, removed, unhandled, rechecked, left}``."""
    expected = "{scanned, removed, unhandled, rechecked, left}"
    values = _array("expire", reply, expected, 5)
    return ExpireResult(*(_int("expire", v) for v in values))


class MigrateStepResult(NamedTuple):
    """migrate_step.lua: entries moved, left alone (acked or taken meanwhile), gone."""

    moved: int
    acked: int
    gone: int


def parse_migrate_step(reply: Any) -> MigrateStepResult:
    """migrate_step.lua: ``{moved, acked, gone}``."""
    values = _array("migrate_step", reply, "{moved, acked, gone}", 3)
    return MigrateStepResult(*(_int("migrate_step", v) for v in values))


def parse_count(script: str, reply: Any) -> int:
    """A script whose reply is one count >= 0: requeue, trim, purge, create_groups,
    count_after."""
    value = _int(script, reply, "a count >= 0")
    if value < 0:
        raise _fail(script, "a count >= 0", reply)
    return value


# -- cron_tick (periodic jobs, issue 16) ----------------------------------------------------


class CronTickResult(NamedTuple):
    """cron_tick.lua: what the call did, the job's last tick after it, and the wait (ms)."""

    status: int
    """1 enqueued by this call, 0 done already, 2 skipped (too late), 3 not due yet."""
    last: int
    """The job's last tick (ms since the epoch; -1: none)."""
    wait_ms: int
    """Status 3: ms until the tick is due on the Redis clock (else 0)."""


def parse_cron_tick(reply: Any) -> CronTickResult:
    """cron_tick.lua: ``{status, last, wait_ms}``."""
    expected = "[status 0-3, last tick, wait ms]"
    status, last, wait = (
        _int("cron_tick", v, expected) for v in _array("cron_tick", reply, expected, 3)
    )
    if status not in (0, 1, 2, 3) or wait < 0:
        raise _fail("cron_tick", expected, reply)
    return CronTickResult(status, last, wait)


# -- cancel (issue 16) -------------------------------------------------------------------


def parse_cancel(reply: Any) -> tuple[CancelOutcome, str]:
    """cancel.lua: ``{status, id}``, the status one of :class:`CancelOutcome`'s values."""
    expected = "{status, id}, status one of " + ", ".join(o.value for o in CancelOutcome)
    status, resolved = _array("cancel", reply, expected, 2)
    try:
        return CancelOutcome(text(status)), text(resolved)
    except (ValueError, TypeError, AttributeError):
        raise _fail("cancel", expected, reply) from None
