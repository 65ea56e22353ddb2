"""Script replies are parsed into typed values, one parser per script; a reply of the
wrong shape is a clear ScriptReplyError naming the script, never an IndexError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, LeanMQError
from leanmq_async.message import DeadLetterResult
from leanmq_async.replies import (
    ExpireReadStatus,
    ExpireResult,
    MoveDueResult,
    ReclaimResult,
    RetryStatus,
    ScriptReplyError,
    parse_count,
    parse_cron_tick,
    parse_dead_letter,
    parse_dead_letter_one,
    parse_defer,
    parse_delete_idle_consumer,
    parse_due_scan,
    parse_expire,
    parse_expire_read,
    parse_extend_leases,
    parse_move_due,
    parse_rate_limit,
    parse_reclaim,
    parse_retry,
    parse_send,
    parse_store_failure,
    parse_store_result,
    text,
)
from leanmq_async.store import SettleCall


def test_well_formed_replies_become_typed_values() -> None:
    assert parse_send([b"1-0", b"000000000000001000000|m"], 2).ids == [
        "1-0",
        "000000000000001000000|m",
    ]
    assert parse_move_due([3, -1]) == MoveDueResult(moved=3, next_due_ms=-1)
    moved, wait = parse_move_due([0, 250])  # still a (moved, ms) pair for the callers
    assert (moved, wait) == (0, 250)
    assert parse_retry(1) is RetryStatus.SCHEDULED
    assert parse_retry(-1) == -1
    assert parse_expire_read(0) is ExpireReadStatus.LIVE
    assert parse_expire([5, 3, 2, 1, 0]) == ExpireResult(
        scanned=5, removed=3, unhandled=2, rechecked=1, left=0
    )
    assert parse_dead_letter(["1-0", "2-0"], [b"moved", b"not_pending"]) == DeadLetterResult(
        moved=["1-0"], not_moved={"2-0": "not_pending"}
    )
    assert parse_dead_letter_one("1-0", [b"not_owned"]) == 0
    assert parse_extend_leases([b"1-0"]) == [b"1-0"]
    assert parse_delete_idle_consumer(1) is True
    assert parse_count("trim", 7) == 7
    assert parse_store_result(1) == 1 and parse_store_result(0) == 0
    assert parse_store_failure(b"1") == 1
    assert parse_rate_limit([-1_700_000_000_000, 1_700_000_001_000], 2) == [
        -1_700_000_000_000,
        1_700_000_001_000,
    ]
    assert parse_defer(1) is RetryStatus.SCHEDULED
    assert parse_defer(2) is RetryStatus.CANCELLED  # a cancelled message is never deferred
    reclaim = parse_reclaim(
        [[[b"1-0", [b"m", b"body", b"x", b"99"]]], [b"1-0", 2], [b"2-0"], b"(3-0"]
    )
    assert reclaim == ReclaimResult(
        entries=[(b"1-0", {b"m": b"body", b"x": b"99"})],
        deliveries={b"1-0": 2},
        missing=[b"2-0"],
        next_start="(3-0",
    )
    assert parse_reclaim([[], [], [], b""]).next_start == ""
    assert text(b"\xff") == "\ufffd" and text(3) == "3"


MALFORMED: list[tuple[str, Callable[[Any], object], Any]] = [
    ("due_scan", lambda r: parse_due_scan(r, 2), []),  # not even the soonest wait
    ("due_scan", lambda r: parse_due_scan(r, 2), [-1, 3]),  # no third key
    ("due_scan", lambda r: parse_due_scan(r, 2), [0, 1]),  # a wait of 0 is "due"
    ("send", lambda r: parse_send(r, 2), [b"1-0"]),  # one id for two messages
    ("send", lambda r: parse_send(r, 1), b"1-0"),  # not an array
    ("send", lambda r: parse_send(r, 1), [7]),  # not an id
    ("send", lambda r: parse_send(r, 1), [b"1-0", 2]),  # a duplicate position out of range
    ("move_due", parse_move_due, [1]),
    ("move_due", parse_move_due, [b"one", 2]),
    ("retry", parse_retry, 3),
    ("retry", parse_retry, [1]),
    ("expire_read", parse_expire_read, b"yes"),
    ("expire", parse_expire, [1, 2, 3, 4]),
    ("dead_letter", lambda r: parse_dead_letter(["1-0"], r), [b"moved", b"moved"]),
    ("dead_letter", lambda r: parse_dead_letter(["1-0"], r), [b"teleported"]),
    ("dead_letter", lambda r: parse_dead_letter_one("1-0", r), 1),
    ("extend_leases", parse_extend_leases, 0),
    ("delete_idle_consumer", parse_delete_idle_consumer, 2),
    ("trim", lambda r: parse_count("trim", r), -1),
    ("trim", lambda r: parse_count("trim", r), None),
    ("trim", lambda r: parse_count("trim", r), True),
    ("reclaim", parse_reclaim, [[], [], []]),  # three parts of four
    ("reclaim", parse_reclaim, [[[b"1-0"]], [], [], b""]),  # an entry without fields
    ("reclaim", parse_reclaim, [[[b"1-0", [b"m"]]], [], [], b""]),  # odd field list
    ("reclaim", parse_reclaim, [[], [b"1-0"], [], b""]),  # an id without its count
    ("reclaim", parse_reclaim, [[], [], [], 0]),
    ("store_result", parse_store_result, 2),
    ("store_failure", parse_store_failure, [1]),
    ("cron_tick", parse_cron_tick, [1, 2]),
    ("cron_tick", parse_cron_tick, [5, 0, 0]),  # no such status
    ("cron_tick", parse_cron_tick, [3, 0, -1]),  # a negative wait
    ("rate_limit", lambda r: parse_rate_limit(r, 2), [-5]),  # one grant for two asks
    ("rate_limit", lambda r: parse_rate_limit(r, 1), [0]),  # a grant is never 0
    ("rate_limit", lambda r: parse_rate_limit(r, 1), 5),  # not an array
    ("defer", parse_defer, 3),  # no such status
]


@pytest.mark.parametrize(("script", "parse", "reply"), MALFORMED)
def test_a_malformed_reply_is_a_clear_error(
    script: str, parse: Callable[[Any], object], reply: Any
) -> None:
    with pytest.raises(ScriptReplyError, match=rf"^script {script} replied .*; expected ") as info:
        parse(reply)
    assert isinstance(info.value, LeanMQError)


@pytest.mark.anyio
async def test_a_malformed_settle_reply_is_that_calls_own_error(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("replies")
    good = mq.store.retry_call(queue.keys, queue.consumer_group, "c", "1-0", 0, 2)
    wrong = SettleCall(raw.register_script("return 'done'"), [queue.stream], [], parse_retry)
    results = await mq.store.settle_many([wrong, good])
    assert isinstance(results[0], ScriptReplyError)
    assert "script retry replied b'done'" in str(results[0])
    assert results[1] == RetryStatus.NOT_OWNED  # the other call is answered as usual
