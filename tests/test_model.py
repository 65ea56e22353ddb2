"""Model-based test of the delivery semantics (issue 11, /work/wt/SEMANTICS.md).

A hypothesis state machine drives random sequences of queue operations against a real
redis-server and checks every step against :mod:`tests.model_ref`: sends (ttl, delay,
message_id, headers), bulk sends, transactions over two queues, reads by several
consumers in two groups, a simulated handler's outcomes (ack, retry like the worker's
``_fail``, Reject), ack, delete, move_to_dlq, requeue, purge, the expiry pass, the delayed
mover, reclaim after a consumer dies, retention trims, time moving on and cancellation by id
(issue 16 part 4: a delayed or unread message is removed and dead-lettered "cancelled"; a
pending one is marked, never retried, and dead-lettered "cancelled" by its handler, as by
a group that reads it later). A handler over its rate limit (issue 16) asks the real
limiter script and defers its message to the start granted (attempts unchanged, the
reservation held until a retry or requeue). Sends reuse
earlier message ids now and then: within its dedup window (per call, or the client's) a
send of an id already sent to that queue writes nothing and returns the first send's id
(also inside one bulk send or transaction); after the window it is written again.

After every step the stream, the pending lists, the delayed set, the expiry index, the
DLQ and ``get_info`` must equal the model's, and no (message, group) may be both handled
and dead-lettered. At teardown time moves past every TTL and delay, everything is read
and settled, and every accepted (message, group) must have exactly one outcome.

``--slow`` runs ten times the examples of CI.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from leanmq_async import LeanMQ
from leanmq_async.envelope import decode_entry, decode_payload
from leanmq_async.exceptions import ConfigurationError, MessageDecodeError
from leanmq_async.priority import level_id
from leanmq_async.queue import Queue
from leanmq_async.reading import dead_letter_info
from leanmq_async.testing import RedisServer
from tests.model_ref import EXPIRED, OPEN, Entry, Model

DEF = "q-group"
GROUPS = {"q": [DEF, "B"], "r": ["r-group"]}
READERS = [("q", DEF), ("q", "B"), ("r", "r-group")]
CONSUMERS = ["c1", "c2", "c3"]
S = 1000
# Durations are 5 s off every multiple of 10 s; time moves in multiples of 10 s.
TTLS = st.sampled_from([0, 15, 25, 45])
DELAYS = st.sampled_from([0, 0, 5, 15, 35])
# Dedup windows: None is the client's (DEDUP); 0 turns dedup off for the send.
DEDUP = 55
WINDOWS = st.sampled_from([None, None, 25, 0])
# None: a fresh message id (or none); an int picks an id sent before.
REUSE = st.one_of(st.none(), st.none(), st.integers(0, 50))
# Each handler's rate limit: one start per 15 s (deferred starts are 5 s off the grid).
RATE_LIMIT, RATE_PER = 1, 15

settings.register_profile(
    "model-ci",
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile("model-slow", settings.get_profile("model-ci"), max_examples=4000)


def _k_of(fields: dict[bytes, bytes] | None) -> tuple[int | None, Any]:
    try:
        entry = decode_entry(fields, 1 << 20)
    except MessageDecodeError:
        return None, None
    return decode_payload(entry)["k"], entry


def _moved_count(result: Any) -> int:
    """move_to_dlq's count: an int today; a result naming the moved ids after item 5."""
    if isinstance(result, int):
        return result
    moved = getattr(result, "moved", result)
    return moved if isinstance(moved, int) else len(moved)


class Delivery:
    """A message a consumer was handed and has not settled yet (its handler 'runs')."""

    __slots__ = ("consumer", "entry", "group", "queue", "sid")

    def __init__(self, queue: str, group: str, consumer: str, entry: Entry, sid: str) -> None:
        self.queue, self.group, self.consumer, self.entry, self.sid = (
            queue,
            group,
            consumer,
            entry,
            sid,
        )


class QueueMachine(RuleBasedStateMachine):
    """One example: a fresh key prefix on the session's redis-server, one event loop."""

    url = ""
    dedup_seen: Counter[str] = Counter()  # over every example: did dedup get exercised?
    cancel_seen: Counter[str] = Counter()  # over every example: each cancel outcome?

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model = Model(GROUPS)
        self.payloads: dict[int, dict[str, Any]] = {}
        self.mids: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.next_k = 0
        self.deliveries: list[Delivery] = []
        self.handled: Counter[tuple[str, int, str]] = Counter()
        self.used_mids: list[str] = []  # explicit message ids sent so far
        self.first_ids: dict[tuple[str, str], str] = {}  # (queue, mid) -> id of its record
        self.mq = LeanMQ(self.url, prefix=f"m{uuid.uuid4().hex[:10]}:", dedup_window=DEDUP)
        self.runner.run(self._setup())

    async def _setup(self) -> None:
        q, _ = await self.mq.create_queue_pair("q")
        r, _ = await self.mq.create_queue_pair("r")
        await self.mq.store.ensure_groups([q.stream], ["B"])
        qb = Queue(self.mq, "q")
        qb.consumer_group = "B"
        self.readers: dict[tuple[str, str], Queue] = {("q", DEF): q, ("q", "B"): qb}
        self.readers[("r", "r-group")] = r
        self.queues = {"q": q, "r": r}

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:  # a failed step is reported as it is
                self._drain()
        finally:
            self.run(self.mq.aclose())
            self.runner.close()

    # -- sending -------------------------------------------------------------------------

    def _payload(
        self, with_mid: bool, with_headers: bool, reuse: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        k = self.next_k = self.next_k + 1
        payload = {"k": k, "s": "zürich ✓ \x00\n", "v": [k, 1.5, None, True, {"n": -k}]}
        self.payloads[k] = payload
        if reuse is not None and self.used_mids:
            self.mids[k] = self.used_mids[reuse % len(self.used_mids)]
        elif with_mid:
            self.mids[k] = f"m-{k}"
            self.used_mids.append(self.mids[k])
        self.headers[k] = {"h": f"v{k}", "trace": "x y"} if with_headers else {}
        return k, payload

    def _model_send(
        self, qname: str, k: int, ttl: int, delay: int, window: int | None, sid: str
    ) -> None:
        """The model's send of ``k`` (returned ``sid``): a duplicate must return the id of
        the send that made the record, and writes nothing."""
        mid = self.mids.get(k, "")  # "" until read: a generated id is never deduplicated
        dedup_ms = (DEDUP if window is None else window) * S if mid else 0
        expired = mid in self.model.queues[qname].sent
        if self.model.send(qname, k, ttl * S, delay * S, mid, dedup_ms):
            if delay:
                self.model.queues[qname].delayed[-1].sid = sid  # its delayed member
            if dedup_ms:
                self.dedup_seen["again after its window" if expired else "recorded"] += 1
                self.first_ids[(qname, mid)] = sid
            return
        self.dedup_seen["duplicate"] += 1
        assert sid == self.first_ids[(qname, mid)], f"duplicate {mid} of {qname}: {sid}"
        del self.mids[k]  # never read: nothing was written

    @rule(
        qname=st.sampled_from(["q", "q", "r"]),
        ttl=TTLS,
        delay=DELAYS,
        with_mid=st.booleans(),
        with_headers=st.booleans(),
        reuse=REUSE,
        window=WINDOWS,
    )
    def send(
        self,
        qname: str,
        ttl: int,
        delay: int,
        with_mid: bool,
        with_headers: bool,
        reuse: int | None,
        window: int | None,
    ) -> None:
        if ttl and delay >= ttl:
            with pytest.raises(ConfigurationError):
                self.run(self.queues[qname].send_message({"k": 0}, ttl=ttl, delay=delay))
            return
        k, payload = self._payload(with_mid, with_headers, reuse)
        sid = self.run(
            self.queues[qname].send_message(
                payload,
                self.mids.get(k),
                ttl or None,
                delay=delay or None,
                headers=self.headers[k] or None,
                dedup_window=window,
            )
        )
        assert sid
        self._model_send(qname, k, ttl, delay, window, sid)

    @rule(
        n=st.integers(1, 4),
        ttl=TTLS,
        delay=DELAYS,
        mids=st.lists(st.one_of(st.none(), st.booleans(), st.integers(0, 50)), max_size=4),
        window=WINDOWS,
    )
    def send_bulk(
        self, n: int, ttl: int, delay: int, mids: list[bool | int | None], window: int | None
    ) -> None:
        """``mids`` per item: None/False no message id, True a fresh one, an int an earlier
        one (an id of this very call, too: its items are created in order)."""
        if ttl and delay >= ttl:
            delay = 0
        picks = [*mids, *[None] * n][:n]
        items = [
            self._payload(p is True, False, None if p is None or isinstance(p, bool) else p)
            for p in picks
        ]
        message_ids = [self.mids.get(k) for k, _ in items]
        ids = self.run(
            self.queues["q"].send_messages(
                [p for _, p in items],
                ttl=ttl or None,
                delay=delay or None,
                message_ids=message_ids if any(message_ids) else None,
                dedup_window=window,
            )
        )
        assert len(ids) == n
        for (k, _), sid in zip(items, ids, strict=True):
            self._model_send("q", k, ttl, delay, window, sid)

    @rule(
        sends=st.lists(
            st.tuples(st.sampled_from(["q", "r"]), TTLS, DELAYS, REUSE), min_size=1, max_size=4
        ),
        window=WINDOWS,
    )
    def transaction(
        self, sends: list[tuple[str, int, int, int | None]], window: int | None
    ) -> None:
        plan = []
        for qname, ttl, delay, reuse in sends:
            k, payload = self._payload(True, True, reuse)
            plan.append((qname, k, payload, ttl, 0 if ttl and delay >= ttl else delay))

        async def commit() -> list[str]:
            async with self.mq.transaction() as tx:
                for qname, k, payload, ttl, delay in plan:
                    tx.send_message(
                        self.queues[qname],
                        payload,
                        self.mids[k],
                        ttl or None,
                        delay=delay or None,
                        headers=self.headers[k],
                        dedup_window=window,
                    )
            return tx.stream_ids

        ids = self.run(commit())
        assert len(ids) == len(plan)
        for (qname, k, _, ttl, delay), sid in zip(plan, ids, strict=True):
            self._model_send(qname, k, ttl, delay, window, sid)

    # -- reading -------------------------------------------------------------------------

    @rule(
        reader=st.sampled_from(READERS),
        consumer=st.sampled_from(CONSUMERS),
        count=st.integers(1, 3),
    )
    def read(self, reader: tuple[str, str], consumer: str, count: int) -> None:
        qname, group = reader
        queue = self.readers[reader]
        self.model.move_due(qname)
        got = self.run(queue.get_messages(count, consumer_id=consumer))
        expected = self.model.read(qname, group, consumer, count)
        assert [m.data.get("k") for m in got] == [e.k for e in expected], (
            f"{qname}/{group} read {[m.data for m in got]}, model {[e.k for e in expected]}"
        )
        for message, entry in zip(got, expected, strict=True):
            self._check_message(message, entry)
            entry.sid = message.id
            self.deliveries.append(Delivery(qname, group, consumer, entry, message.id))

    @rule(
        reader=st.sampled_from(READERS),
        consumer=st.sampled_from(CONSUMERS),
        count=st.integers(1, 3),
    )
    def read_again(self, reader: tuple[str, str], consumer: str, count: int) -> None:
        """Reads are drawn twice as often as other rules: deliveries are what matter."""
        self.read(reader, consumer, count)

    def _check_message(self, message: Any, entry: Entry) -> None:
        k = entry.k
        assert message.data == self.payloads[k], "payload changed"
        if k in self.mids:
            assert message.message_id == self.mids[k]
        else:
            self.mids[k] = message.message_id
        assert message.headers == self.headers[k]
        assert message.attempt == entry.attempts + 1
        if entry.reserved is not None:
            self.dedup_seen["rate limited: read back holding its reservation"] += 1

    # -- a handler's outcomes ------------------------------------------------------------

    @precondition(lambda self: self.deliveries)
    @rule(
        i=st.integers(0, 50),
        outcome=st.sampled_from(["success", "success", "failure", "reject"]),
        delay=st.sampled_from([0, 5, 15]),
    )
    def handler(self, i: int, outcome: str, delay: int) -> None:
        """The handler of a delivery ends: success acks; failure retries (``store.retry_call``
        in a ``settle_many`` batch, ownership-checked, as the worker's ``_fail``); Reject
        dead-letters (``store.dead_letter_call``)."""
        d = self.deliveries.pop(i % len(self.deliveries))
        queue, store = self.queues[d.queue], self.mq.store
        if d.entry.seq in self.model.queues[d.queue].cancelled and outcome != "success":
            # Cancelled while it runs: a failure's retry is refused (retry.lua answers 2);
            # "reject" stands for the handler cancelled by its worker. Both dead-letter it
            # "cancelled". "success": the handler returned before the cancel reached it.
            self._honour_cancel(d, delay, retry_first=outcome == "failure")
            return
        if outcome == "success":
            n = self.run(store.ack(queue.stream, d.group, [d.sid]))
            assert n == self.model.ack(d.queue, d.group, d.entry.seq), "ack count"
            if n:
                self.handled[(d.queue, d.entry.k, d.group)] += 1
            return
        if outcome == "failure":
            attempt = d.entry.attempts + 1
            call = store.retry_call(queue.keys, d.group, d.consumer, d.sid, delay * S, attempt)
            expected = self.model.retry(d.queue, d.group, d.consumer, d.entry.seq, delay * S)
        else:
            item = (d.sid, "rejected", "Reject", "", d.entry.attempts + 1)
            call = store.dead_letter_call(queue.keys, d.group, d.consumer, queue.name, item)
            expected = self.model.dead_letter(d.queue, d.group, d.consumer, d.entry.seq, "rejected")
        (result,) = self.run(store.settle_many([call]))
        assert result == expected, f"{outcome} of {d.sid} ({d.queue}/{d.group}): {result!r}"

    def _honour_cancel(self, d: Delivery, delay: int, *, retry_first: bool = True) -> None:
        """A cancelled delivery is dead-lettered "cancelled" (as the worker's executor does);
        ``retry_first``: its handler failed, and the retry is refused first (2)."""
        queue, store = self.queues[d.queue], self.mq.store
        attempt = d.entry.attempts + 1
        if retry_first:
            call = store.retry_call(queue.keys, d.group, d.consumer, d.sid, delay * S, attempt)
            expected = self.model.retry(d.queue, d.group, d.consumer, d.entry.seq, delay * S)
            assert self.run(store.settle_many([call])) == [expected]
            if expected != 2:
                return
        item = (d.sid, "cancelled", "Cancelled", "", d.entry.attempts + 1)
        call = store.dead_letter_call(queue.keys, d.group, d.consumer, queue.name, item)
        expected = self.model.dead_letter(d.queue, d.group, d.consumer, d.entry.seq, "cancelled")
        assert self.run(store.settle_many([call])) == [expected]

    @precondition(lambda self: self.deliveries)
    @rule(i=st.integers(0, 50))
    def rate_limited(self, i: int) -> None:
        """The executor's limiter step before a handler starts (issue 16): a copy holding
        a reservation starts on it (a rescuer asks again); otherwise the limiter grants a
        start: now (the handler runs) or later (``store.defer_call``: the message waits
        in the delayed set, attempts unchanged)."""
        d = self.deliveries[i % len(self.deliveries)]
        if d.entry.reserved is not None and not d.consumer.startswith("r-"):
            return  # started on its reservation, without asking
        queue, store = self.queues[d.queue], self.mq.store
        log = queue.keys.rate_limit(d.group)
        (granted,) = self.run(store.rate_limit([log], [1], RATE_LIMIT, RATE_PER * S, 0))
        grant = self.model.rate_limit(d.queue, d.group, RATE_LIMIT, RATE_PER * S)
        assert (granted < 0) == (grant[0] == self.model.now), f"granted {granted}, {grant}"
        if granted < 0:
            return  # started now
        self.deliveries.remove(d)
        call = store.defer_call(queue.keys, d.group, d.consumer, d.sid, granted)
        (result,) = self.run(store.settle_many([call]))
        expected = self.model.defer(d.queue, d.group, d.consumer, d.entry.seq, grant)
        assert result == expected, f"defer of {d.sid} ({d.queue}/{d.group}): {result!r}"
        if result == 2:  # cancelled: never deferred nor run; the executor dead-letters it
            self._honour_cancel(d, 0, retry_first=False)
            self.dedup_seen["rate limited: cancelled"] += 1
            return
        self.dedup_seen["rate limited: deferred" if result == 1 else "rate limited: other"] += 1

    # -- user calls ----------------------------------------------------------------------

    @rule(
        qname=st.sampled_from(["q", "q", "r"]),
        where=st.sampled_from(["stream", "stream", "read", "pending", "delayed", "unknown"]),
        pick=st.integers(0, 50),
    )
    def cancel(self, qname: str, where: str, pick: int) -> None:
        """``Queue.cancel`` of a stream entry (unread, pending or finished per group; "read"
        picks one every group it is for has read and none holds: finished; "pending" one
        some group holds: running), a delayed member (a delay or a retry) or an unknown id.
        The two picks make every outcome reachable by design, not by chance."""
        qm = self.model.queues[qname]
        held = [e for e in qm.stream.values() if any(e.seq in qm.pending[g] for g in qm.aimed(e))]
        read = [
            e
            for e in qm.stream.values()
            if all(e.seq <= qm.cursor[g] and e.seq not in qm.pending[g] for g in qm.aimed(e))
        ]
        if where == "read" and read:
            e = read[pick % len(read)]
            mid, expected = e.sid, self.model.cancel(qname, seq=e.seq)
        elif where == "pending" and held:
            e = held[pick % len(held)]
            mid, expected = e.sid, self.model.cancel(qname, seq=e.seq)
        elif where == "delayed" and qm.delayed:
            e = qm.delayed[pick % len(qm.delayed)]
            mid, expected = e.sid, self.model.cancel(qname, delayed=e)
        elif where == "stream" and qm.stream:
            e = list(qm.stream.values())[pick % len(qm.stream)]
            mid, expected = e.sid, self.model.cancel(qname, seq=e.seq)
        else:
            mid, expected = "1-1", "not_found"
        got = self.run(self.queues[qname].cancel(mid))
        assert got == expected, f"cancel {mid} of {qname}: {got}, model {expected}"
        self.cancel_seen[expected] += 1

    @precondition(lambda self: any(self.model.queues["q"].stream))
    @rule(
        group=st.sampled_from([DEF, "B"]),
        picks=st.lists(st.integers(0, 50), min_size=1, max_size=3),
    )
    def move_to_dlq(self, group: str, picks: list[int]) -> None:
        mq = self.model.queues["q"]
        pool = list(mq.stream.values())
        if not pool:
            return
        chosen = list(dict.fromkeys(pool[p % len(pool)].seq for p in picks))
        sids = [mq.stream[s].sid for s in chosen]
        result = self.run(self.readers[("q", group)].move_to_dlq(sids, "moved"))
        assert _moved_count(result) == self.model.move_to_dlq("q", group, chosen)

    @precondition(lambda self: any(self.model.queues["q"].stream))
    @rule(group=st.sampled_from([DEF, "B"]), pick=st.integers(0, 50))
    def delete(self, group: str, pick: int) -> None:
        mq = self.model.queues["q"]
        entries = list(mq.stream.values())
        e = entries[pick % len(entries)]
        n = self.run(self.readers[("q", group)].delete_messages([e.sid]))
        assert n == self.model.delete("q", group, [e.seq])

    @precondition(lambda self: self.model.queues["q"].dlq)
    @rule(pick=st.integers(0, 50))
    def requeue(self, pick: int) -> None:
        dead = self.model.queues["q"].dlq
        d = dead[pick % len(dead)]
        dlq = self.queues["q"].dead_letter_queue()
        n = self.run(dlq.requeue_messages([d.sid]))
        assert n == self.model.requeue("q", d)

    @rule(qname=st.sampled_from(["q", "r"]))
    def purge(self, qname: str) -> None:
        n = self.run(self.queues[qname].purge())
        assert n == self.model.purge(qname)
        self.first_ids = {key: sid for key, sid in self.first_ids.items() if key[0] != qname}

    # -- upkeep --------------------------------------------------------------------------

    @rule(policy=st.sampled_from(["drop", "dlq"]))
    def expiry_pass(self, policy: str) -> None:
        n = self.run(self.mq.process_expired_messages(policy=policy))
        assert n == sum(self.model.expire(q, policy) for q in GROUPS), "expired count"

    @rule(qname=st.sampled_from(["q", "r"]))
    def move_due(self, qname: str) -> None:
        moved, _ = self.run(self.mq.store.move_due(self.queues[qname].keys))
        assert moved == self.model.move_due(qname)

    @rule(qname=st.sampled_from(["q", "r"]), age=st.sampled_from([5, 15, 55, 3605]))
    def trim(self, qname: str, age: int) -> None:
        n = self.run(self.mq.store.trim(self.queues[qname].stream, age * S))
        assert n == self.model.trim(qname, age * S)

    @rule(
        reader=st.sampled_from(READERS),
        dead=st.sampled_from(CONSUMERS),
        policy=st.sampled_from(["drop", "dlq"]),
    )
    def reclaim(self, reader: tuple[str, str], dead: str, policy: str) -> None:
        """``dead`` died: another consumer claims its entries (min idle 0) and processes
        each like the worker's executor (``Executor.process``) does."""
        qname, group = reader
        rescuer = f"r-{dead}"
        self.deliveries = [
            d for d in self.deliveries if (d.queue, d.group, d.consumer) != (qname, group, dead)
        ]
        queue = self.queues[qname]
        found = self.run(self.mq.store.reclaim(queue.stream, group, rescuer, 0, 1000, owner=dead))
        claimed, missing = self.model.reclaim(qname, group, dead, rescuer)
        assert [_k_of(f)[0] for _, f in found.entries] == [e.k for e in claimed]
        assert len(found.missing) == missing
        for (raw_sid, _fields), e in zip(found.entries, claimed, strict=True):
            sid = raw_sid.decode()
            assert sid == e.sid, "reclaimed another entry"
            if e.x is not None and e.x <= self.model.now:
                if policy == "dlq":
                    item = (sid, "expired", "Expired", "", 0)
                    call = self.mq.store.dead_letter_call(
                        queue.keys, group, rescuer, queue.name, item
                    )
                    (result,) = self.run(self.mq.store.settle_many([call]))
                    assert result == self.model.dead_letter(qname, group, rescuer, e.seq, "expired")
                else:
                    n = self.run(self.mq.store.ack(queue.stream, group, [sid]))
                    assert n == 1
                    self.model.queues[qname].pending[group].pop(e.seq)
                    self.model.outcome[(qname, e.k, group)] = EXPIRED
            else:
                self.deliveries.append(Delivery(qname, group, rescuer, e, sid))

    @rule(step=st.sampled_from([10, 20, 30, 60]))
    def time_passes(self, step: int) -> None:
        self.model.now += step * S
        self.mq.store.clock_shift_ms = self.model.now

    # -- checks --------------------------------------------------------------------------

    @invariant()
    def redis_agrees_with_the_model(self) -> None:
        self.run(self._check_state())

    async def _check_state(self) -> None:
        client: aioredis.Redis = self.mq.store.client
        for qname, qm in self.model.queues.items():
            queue = self.queues[qname]
            keys = queue.keys
            async with client.pipeline(transaction=False) as pipe:
                pipe.xrange(keys.stream)
                pipe.xrange(keys.dlq)
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.expiry)
                pipe.zcard(keys.cancelled)
                for g in qm.groups:
                    pipe.xpending_range(keys.stream, g, "-", "+", 10_000)
                stream, dlq, delayed, expiry, cancelled, *pending = await pipe.execute()
            assert cancelled == len(qm.cancelled), f"cancel markers {qname}"
            # The stream, in order: message, target group, attempts, has a TTL, holds a
            # rate-limit reservation.
            real = []
            for _, fields in stream:
                k, entry = _k_of(fields)
                real.append(
                    (
                        k,
                        entry.target_group,
                        entry.attempts,
                        entry.expires_at_ms is not None,
                        b"rl" in fields,
                    )
                )
            want = [
                (e.k, e.target, e.attempts, e.x is not None, e.reserved is not None)
                for e in qm.stream.values()
            ]
            assert real == want, f"stream {qname}: redis {real}, model {want}"
            for (sid, _), e in zip(stream, qm.stream.values(), strict=True):
                e.sid = sid.decode()
            assert delayed == len(qm.delayed), f"delayed {qname}: {delayed} vs {len(qm.delayed)}"
            assert expiry == len(qm.expiry), f"expiry index {qname}"
            by_seq = {e.seq: e.sid for e in qm.stream.values()}
            for g, rows in zip(qm.groups, pending, strict=True):
                got = {r["message_id"].decode(): r["consumer"].decode() for r in rows}
                mine = {by_seq.get(s, f"gone-{s}"): c for s, c in qm.pending[g].items()}
                if any(s.startswith("gone-") for s in mine):
                    # Deleted while pending: compare the count and the live ones.
                    live = {s: c for s, c in mine.items() if not s.startswith("gone-")}
                    assert len(got) == len(mine), f"pending {qname}/{g}: {got} vs {mine}"
                    assert {s: got.get(s) for s in live} == live
                else:
                    assert got == mine, f"pending {qname}/{g}: redis {got}, model {mine}"
            # The DLQ, as a multiset of (message, group, reason); sids bound by match.
            free: dict[tuple[int | None, str, str], list[str]] = {}
            for sid, fields in dlq:
                info = dead_letter_info(fields)
                assert info is not None
                k, _ = _k_of(fields)
                reason = "expired" if info.reason.startswith("expired") else info.reason
                free.setdefault((k, info.group, reason), []).append(sid.decode())
            real_dlq = Counter({key: len(v) for key, v in free.items()})
            want_dlq = Counter((d.k, d.group, d.reason) for d in qm.dlq)
            assert real_dlq == want_dlq, f"dlq {qname}: redis {real_dlq}, model {want_dlq}"
            for d in qm.dlq:
                d.sid = free[(d.k, d.group, d.reason)].pop(0)
            # Handled and dead-lettered at once (for that group, or for every group: '').
            for k, group, _ in real_dlq:
                for g in qm.groups if group == "" else [group]:
                    assert not self.handled[(qname, k, g)], f"{k} handled by {g} and in DLQ"
            info = await queue.get_info()
            assert info.message_count == len(qm.stream)
            assert info.pending_messages == len(qm.pending[qm.groups[0] if qname == "r" else DEF])
            assert info.delayed_messages == len(qm.delayed)
        assert all(n == 1 for n in self.handled.values()), "handled twice"

    def _settle_all(self) -> None:
        """Every running handler ends: success, or a cancelled one dead-lettered."""
        while self.deliveries:
            d = self.deliveries[0]
            marked = d.entry.seq in self.model.queues[d.queue].cancelled
            self.handler(0, "failure" if marked else "success", 0)

    def _drain(self) -> None:
        """Settle what runs, rescue the dead's entries, let time pass every TTL and delay,
        read and handle everything: then every (message, group) has one outcome."""
        store = self.mq.store
        self._settle_all()
        for qname, group in READERS:
            holders = set(self.model.queues[qname].pending[group].values())
            for dead in sorted(holders):
                self.reclaim((qname, group), dead, "drop")
        self._settle_all()
        self.time_passes(10_000)
        for qname in GROUPS:
            self.move_due(qname)
        for (qname, group), queue in self.readers.items():
            while got := self.run(queue.get_messages(10, consumer_id="drain")):
                expected = self.model.read(qname, group, "drain", 10)
                assert [m.data["k"] for m in got] == [e.k for e in expected]
                for m, e in zip(got, expected, strict=True):
                    self._check_message(m, e)
                    if e.seq in self.model.queues[qname].cancelled:  # as the worker does
                        self._honour_cancel(Delivery(qname, group, "drain", e, m.id), 0)
                        continue
                    assert self.run(store.ack(queue.stream, group, [m.id])) == 1
                    self.model.ack(qname, group, e.seq)
                    self.handled[(qname, e.k, group)] += 1
            assert self.model.read(qname, group, "drain", 10) == []
        self.expiry_pass("drop")
        self.run(self._check_state())
        for qm in self.model.queues.values():
            assert not any(qm.pending.values()), f"still pending in {qm.name}: {qm.pending}"
            assert not qm.delayed
        open_pairs = [key for key, state in self.model.outcome.items() if state == OPEN]
        assert not open_pairs, f"accepted but never settled: {open_pairs}"


@pytest.mark.timeout(3600)
def test_delivery_semantics_model(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    QueueMachine.url = redis_server.url
    profile = "model-slow" if request.config.getoption("--slow") else "model-ci"
    QueueMachine.dedup_seen.clear()
    QueueMachine.cancel_seen.clear()
    run_state_machine_as_test(QueueMachine, settings=settings.get_profile(profile))
    seen = QueueMachine.dedup_seen
    assert min(seen["recorded"], seen["duplicate"], seen["again after its window"]) > 0, seen
    cancels = QueueMachine.cancel_seen
    assert min(cancels[o] for o in ("cancelled", "running", "finished", "not_found")) > 0, cancels
    assert seen["rate limited: deferred"] > 0, seen
    assert seen["rate limited: read back holding its reservation"] > 0, seen


# -- priorities (issue 16) -----------------------------------------------------------------

PDEF = "p-group"
PGROUPS = [PDEF, "B"]
LEVEL_NAMES = {0: "p0", 1: "p1", 2: "p2"}


class PriorityMachine(RuleBasedStateMachine):
    """Priority sends and the worker's priority read on one queue, ``p``, with two groups.

    Each level is a queue of the model (``p0``, ``p1``, ``p2``). A claim
    (``Store.claim_new``, the worker's read) must return what :meth:`Model.claim` says, in
    its order: highest level first, or lowest first (the starvation guard). Retries keep
    their level; delays move back into it; reclaim, the expiry pass, the DLQ work per
    level, and a requeued dead letter goes back to its level; a cancel by the id a user
    sees (``<stream id>:p<level>``, a delayed member, a retry's member) acts on that level
    only, its marker named so (equal stream ids of two levels are common here: XADD '*' in
    the same ms); at teardown every (message, group) has exactly one outcome.
    """

    cancel_seen: Counter[str] = Counter()  # over every example: each cancel outcome?

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model = Model(dict.fromkeys(LEVEL_NAMES.values(), PGROUPS))
        self.next_k = 0
        self.deliveries: list[tuple[int, Delivery]] = []
        self.handled: Counter[tuple[int, str]] = Counter()
        self.mq = LeanMQ(self.url, prefix=f"p{uuid.uuid4().hex[:10]}:")
        self.queue = self.runner.run(self._setup())

    async def _setup(self) -> Queue:
        q, _ = await self.mq.create_queue_pair("p")
        await self.mq.store.ensure_groups([q.stream], ["B"])
        return q

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:
                self._drain()
        finally:
            self.run(self.mq.aclose())
            self.runner.close()

    @rule(level=st.sampled_from([0, 1, 2]), n=st.integers(1, 3), ttl=TTLS, delay=DELAYS)
    def send(self, level: int, n: int, ttl: int, delay: int) -> None:
        if ttl and delay >= ttl:
            delay = 0
        ks = list(range(self.next_k + 1, self.next_k + n + 1))
        self.next_k += n
        ids = self.run(
            self.queue.send_messages(
                [{"k": k} for k in ks], ttl=ttl or None, delay=delay or None, priority=level
            )
        )
        assert len(ids) == n
        for k, sid in zip(ks, ids, strict=True):
            assert self.model.send(LEVEL_NAMES[level], k, ttl * S, delay * S)
            if delay:
                self.model.queues[LEVEL_NAMES[level]].delayed[-1].sid = sid  # its member

    @rule(
        group=st.sampled_from(PGROUPS),
        consumer=st.sampled_from(CONSUMERS),
        count=st.integers(1, 4),
        guard=st.booleans(),
    )
    def claim(self, group: str, consumer: str, count: int, guard: bool) -> None:
        order = list(self.queue.keys.levels())  # highest first
        if guard:
            order.reverse()
        found, _ = self.run(self.mq.store.claim_new(order, group, consumer, count))
        got = [(lv, _k_of(f)[0], sid.decode()) for lv, entries in found for sid, f in entries]
        want = self.model.claim([LEVEL_NAMES[k.level] for k in order], group, consumer, count)
        assert [(lv, k) for lv, k, _ in got] == [(int(n[1]), e.k) for n, e in want], (got, want)
        for (level, _, sid), (_, e) in zip(got, want, strict=True):
            e.sid = sid
            self._triage(level, group, consumer, e)

    def _triage(self, level: int, group: str, consumer: str, e: Entry) -> None:
        """What the worker's executor does first: skip a foreign copy, expire a late one."""
        store, keys, name = self.mq.store, self.queue.keys.at(level), LEVEL_NAMES[level]
        if e.target not in (None, group):
            assert self.run(store.ack(keys.stream, group, [e.sid])) == 1
            assert self.model.skip(name, group, e.seq) == 1
        elif e.x is not None and e.x <= self.model.now:
            call = store.expire_read_call(keys, group, consumer, "p", "drop", e.sid, e.x)
            (result,) = self.run(store.settle_many([call]))
            assert result == 1, f"expire_read of {e.sid}: {result!r}"
            self.model.queues[name].pending[group].pop(e.seq)
            self.model.outcome[(name, e.k, group)] = EXPIRED
        else:
            self.deliveries.append((level, Delivery(name, group, consumer, e, e.sid)))

    @precondition(lambda self: self.deliveries)
    @rule(
        i=st.integers(0, 50),
        outcome=st.sampled_from(["success", "success", "failure", "reject"]),
        delay=st.sampled_from([0, 5, 15]),
    )
    def handler(self, i: int, outcome: str, delay: int) -> None:
        level, d = self.deliveries.pop(i % len(self.deliveries))
        store, keys = self.mq.store, self.queue.keys.at(level)
        if d.entry.seq in self.model.queues[d.queue].cancelled and outcome != "success":
            # As QueueMachine.handler: a failure's retry is refused (retry.lua, called with
            # the level's keys, checks the level's name), "reject" stands for the handler
            # cancelled by its worker; both dead-letter it "cancelled".
            self._honour_cancel(level, d, delay, retry_first=outcome == "failure")
            return
        if outcome == "success":
            n = self.run(store.ack(keys.stream, d.group, [d.sid]))
            assert n == self.model.ack(d.queue, d.group, d.entry.seq)
            if n:
                self.handled[(d.entry.k, d.group)] += 1
            return
        if outcome == "failure":
            attempt = d.entry.attempts + 1
            call = store.retry_call(keys, d.group, d.consumer, d.sid, delay * S, attempt)
            expected = self.model.retry(d.queue, d.group, d.consumer, d.entry.seq, delay * S)
        else:
            item = (d.sid, "rejected", "Reject", "", d.entry.attempts + 1)
            call = store.dead_letter_call(keys, d.group, d.consumer, "p", item)
            expected = self.model.dead_letter(d.queue, d.group, d.consumer, d.entry.seq, "rejected")
        (result,) = self.run(store.settle_many([call]))
        assert result == expected, f"{outcome} of {d.sid} (level {level}): {result!r}"

    def _honour_cancel(self, level: int, d: Delivery, delay: int, *, retry_first: bool) -> None:
        """A cancelled delivery of ``level`` is dead-lettered "cancelled" (the executor's
        way); ``retry_first``: its handler failed, and the retry is refused first (2)."""
        store, keys = self.mq.store, self.queue.keys.at(level)
        attempt = d.entry.attempts + 1
        if retry_first:
            call = store.retry_call(keys, d.group, d.consumer, d.sid, delay * S, attempt)
            expected = self.model.retry(d.queue, d.group, d.consumer, d.entry.seq, delay * S)
            assert self.run(store.settle_many([call])) == [expected], f"retry of {d.sid}"
            if expected != 2:
                return
        item = (d.sid, "cancelled", "Cancelled", "", attempt)
        call = store.dead_letter_call(keys, d.group, d.consumer, "p", item)
        expected = self.model.dead_letter(d.queue, d.group, d.consumer, d.entry.seq, "cancelled")
        assert self.run(store.settle_many([call])) == [expected], f"cancelled {d.sid}"

    @rule(
        level=st.sampled_from([0, 1, 2]),
        where=st.sampled_from(["stream", "stream", "read", "delayed", "unknown"]),
        pick=st.integers(0, 50),
    )
    def cancel(self, level: int, where: str, pick: int) -> None:
        """``Queue.cancel`` of a level's stream entry by its name (``<sid>:p<level>``), of a
        delayed member (a delayed send's or a retry's, found in the level's delayed set),
        or of an unknown id."""
        name = LEVEL_NAMES[level]
        qm = self.model.queues[name]
        read = [  # read by every group it is for, pending in none: finished (or retried)
            e
            for e in qm.stream.values()
            if all(e.seq <= qm.cursor[g] and e.seq not in qm.pending[g] for g in qm.aimed(e))
        ]
        if where == "read" and read:
            e = read[pick % len(read)]
            mid, expected = level_id(e.sid, level), self.model.cancel(name, seq=e.seq)
        elif where == "delayed" and qm.delayed:
            e = qm.delayed[pick % len(qm.delayed)]
            mid, expected = e.sid, self.model.cancel(name, delayed=e)
        elif where == "stream" and qm.stream:
            e = list(qm.stream.values())[pick % len(qm.stream)]
            mid, expected = level_id(e.sid, level), self.model.cancel(name, seq=e.seq)
        else:
            mid, expected = level_id("1-1", level), "not_found"
        got = self.run(self.queue.cancel(mid))
        assert got == expected, f"cancel {mid} of level {level}: {got}, model {expected}"
        self.cancel_seen[expected] += 1

    @rule(level=st.sampled_from([0, 1, 2]))
    def move_due(self, level: int) -> None:
        moved, _ = self.run(self.mq.store.move_due(self.queue.keys.at(level)))
        assert moved == self.model.move_due(LEVEL_NAMES[level])

    @rule(policy=st.sampled_from(["drop", "dlq"]))
    def expiry_pass(self, policy: str) -> None:
        n = self.run(self.mq.process_expired_messages(policy=policy))
        assert n == sum(self.model.expire(name, policy) for name in LEVEL_NAMES.values())

    @rule(group=st.sampled_from(PGROUPS), dead=st.sampled_from(CONSUMERS), level=st.integers(0, 2))
    def reclaim(self, group: str, dead: str, level: int) -> None:
        """``dead`` died: another consumer claims what it held of ``level`` (min idle 0)."""
        name, keys, rescuer = LEVEL_NAMES[level], self.queue.keys.at(level), f"r-{dead}"
        self.deliveries = [
            (lv, d)
            for lv, d in self.deliveries
            if (lv, d.group, d.consumer) != (level, group, dead)
        ]
        if not self.model.queues[name].pending[group]:
            return  # the level's stream may not exist yet: nothing is pending in it
        found = self.run(self.mq.store.reclaim(keys.stream, group, rescuer, 0, 1000, owner=dead))
        claimed, missing = self.model.reclaim(name, group, dead, rescuer)
        assert [_k_of(f)[0] for _, f in found.entries] == [e.k for e in claimed]
        assert len(found.missing) == missing
        for (raw_sid, _), e in zip(found.entries, claimed, strict=True):
            assert raw_sid.decode() == e.sid
            self._triage(level, group, rescuer, e)

    @precondition(lambda self: any(self.model.queues[n].dlq for n in LEVEL_NAMES.values()))
    @rule(pick=st.integers(0, 50))
    def requeue(self, pick: int) -> None:
        """A dead letter goes back to the level it came from (its ``dlq.id`` names it)."""
        dead = [(n, d) for n in LEVEL_NAMES.values() for d in self.model.queues[n].dlq]
        name, d = dead[pick % len(dead)]
        n = self.run(self.queue.dead_letter_queue().requeue_messages([d.sid]))
        assert n == self.model.requeue(name, d)

    @rule(step=st.sampled_from([10, 20, 30, 60]))
    def time_passes(self, step: int) -> None:
        self.model.now += step * S
        self.mq.store.clock_shift_ms = self.model.now

    @invariant()
    def redis_agrees_with_the_model(self) -> None:
        self.run(self._check_state())

    async def _check_state(self) -> None:
        client: aioredis.Redis = self.mq.store.client
        want_dlq: Counter[tuple[int | None, str, str]] = Counter()
        for level, name in LEVEL_NAMES.items():
            qm, keys = self.model.queues[name], self.queue.keys.at(level)
            async with client.pipeline(transaction=False) as pipe:
                pipe.xrange(keys.stream)
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.expiry)
                for g in PGROUPS:
                    pipe.xpending_range(keys.stream, g, "-", "+", 10_000)
                stream, delayed, expiry, *pending = await pipe.execute(raise_on_error=False)
            real = [
                (_k_of(f)[0], _k_of(f)[1].target_group, _k_of(f)[1].attempts) for _, f in stream
            ]
            want = [(e.k, e.target, e.attempts) for e in qm.stream.values()]
            assert real == want, f"level {level}: redis {real}, model {want}"
            for (sid, _), e in zip(stream, qm.stream.values(), strict=True):
                e.sid = sid.decode()
            assert delayed == len(qm.delayed), f"delayed of level {level}"
            assert expiry == len(qm.expiry), f"expiry index of level {level}"
            by_seq = {e.seq: e.sid for e in qm.stream.values()}
            for g, rows in zip(PGROUPS, pending, strict=True):
                got = (
                    {}
                    if isinstance(rows, Exception)
                    else {r["message_id"].decode(): r["consumer"].decode() for r in rows}
                )
                mine = {by_seq.get(s, f"gone-{s}"): c for s, c in qm.pending[g].items()}
                assert len(got) == len(mine), f"pending {name}/{g}: {got} vs {mine}"
                assert {s: got.get(s) for s in mine if not s.startswith("gone-")} == {
                    s: c for s, c in mine.items() if not s.startswith("gone-")
                }
            want_dlq.update((d.k, d.group, d.reason) for d in qm.dlq)
        # One marker per (level, entry): named with the level, equal stream ids stay apart.
        markers = await client.zcard(self.queue.keys.cancelled)
        assert markers == sum(len(self.model.queues[n].cancelled) for n in LEVEL_NAMES.values())
        free: dict[tuple[int | None, str, str], list[str]] = {}
        for sid, fields in await client.xrange(self.queue.keys.dlq):
            info = dead_letter_info(fields)
            assert info is not None
            reason = "expired" if info.reason.startswith("expired") else info.reason
            free.setdefault((_k_of(fields)[0], info.group, reason), []).append(sid.decode())
        real_dlq = Counter({key: len(v) for key, v in free.items()})
        assert real_dlq == want_dlq, f"dlq: redis {real_dlq}, model {want_dlq}"
        for name in LEVEL_NAMES.values():  # bind the model's dead letters to DLQ ids
            for d in self.model.queues[name].dlq:
                d.sid = free[(d.k, d.group, d.reason)].pop(0)
        assert all(n == 1 for n in self.handled.values()), "handled twice"

    def _settle_all(self) -> None:
        """Every running handler ends: success, or a cancelled one dead-lettered."""
        while self.deliveries:
            _, d = self.deliveries[0]
            marked = d.entry.seq in self.model.queues[d.queue].cancelled
            self.handler(0, "failure" if marked else "success", 0)

    def _drain(self) -> None:
        self._settle_all()
        for level, name in LEVEL_NAMES.items():
            for group in PGROUPS:
                for dead in sorted(set(self.model.queues[name].pending[group].values())):
                    self.reclaim(group, dead, level)
        self._settle_all()
        self.time_passes(10_000)
        for level in LEVEL_NAMES:
            self.move_due(level)
        for group in PGROUPS:
            while True:
                before = len(self.deliveries)
                self.claim(group, "drain", 10, False)
                if (
                    not any(
                        e.seq > self.model.queues[n].cursor[group]
                        for n in LEVEL_NAMES.values()
                        for e in self.model.queues[n].stream.values()
                    )
                    and len(self.deliveries) == before
                ):
                    break
            self._settle_all()
        self.expiry_pass("drop")
        self.run(self._check_state())
        open_pairs = [key for key, state in self.model.outcome.items() if state == OPEN]
        assert not open_pairs, f"accepted but never settled: {open_pairs}"


settings.register_profile(
    "priority-ci", settings.get_profile("model-ci"), max_examples=150, stateful_step_count=30
)


@pytest.mark.timeout(3600)
def test_priority_model(redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
    PriorityMachine.url = redis_server.url
    profile = "model-slow" if request.config.getoption("--slow") else "priority-ci"
    PriorityMachine.cancel_seen.clear()
    run_state_machine_as_test(PriorityMachine, settings=settings.get_profile(profile))
    cancels = PriorityMachine.cancel_seen
    assert min(cancels[o] for o in ("cancelled", "running", "finished", "not_found")) > 0, cancels


class LimitedPriorityMachine(PriorityMachine):
    """PriorityMachine with a rate-limited handler: the executor's limiter step on a
    delivery of any level (a separate machine, so that PriorityMachine's own derandomized
    examples, and the cancel outcomes they reach, stay as they were)."""

    limit_seen: Counter[str] = Counter()  # over every example: deferred, refused?

    @precondition(lambda self: self.deliveries)
    @rule(i=st.integers(0, 50))
    def rate_limited(self, i: int) -> None:
        """As QueueMachine.rate_limited, for a delivery of any level: one limiter log per
        group (the handler's, whatever the level), and the deferral waits in the delayed
        set of the delivery's level (it comes back at its priority); a cancelled one is
        refused (2) and dead-lettered "cancelled"."""
        level, d = self.deliveries[i % len(self.deliveries)]
        if d.entry.reserved is not None and not d.consumer.startswith("r-"):
            return  # started on its reservation, without asking
        store, keys = self.mq.store, self.queue.keys.at(level)
        log = self.queue.keys.rate_limit(d.group)
        (granted,) = self.run(store.rate_limit([log], [1], RATE_LIMIT, RATE_PER * S, 0))
        grant = self.model.rate_limit("p", d.group, RATE_LIMIT, RATE_PER * S)
        assert (granted < 0) == (grant[0] == self.model.now), f"granted {granted}, {grant}"
        if granted < 0:
            return  # started now
        self.deliveries.remove((level, d))
        call = store.defer_call(keys, d.group, d.consumer, d.sid, granted)
        (result,) = self.run(store.settle_many([call]))
        expected = self.model.defer(d.queue, d.group, d.consumer, d.entry.seq, grant)
        assert result == expected, f"defer of {d.sid} (level {level}): {result!r}"
        self.limit_seen[f"level {level}: {result}"] += 1
        if result == 2:
            self._honour_cancel(level, d, 0, retry_first=False)


@pytest.mark.timeout(3600)
def test_limited_priority_model(redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
    """Deferrals keep their level, cancelled deliveries are never deferred (defer.lua 2)."""
    LimitedPriorityMachine.url = redis_server.url
    profile = "model-slow" if request.config.getoption("--slow") else "priority-ci"
    LimitedPriorityMachine.limit_seen.clear()
    run_state_machine_as_test(LimitedPriorityMachine, settings=settings.get_profile(profile))
    assert sum(LimitedPriorityMachine.limit_seen.values()) > 0, "no deferral reached"


@pytest.mark.parametrize("level", [0, 2])
def test_limited_priority_sequences(redis_server: RedisServer, level: int) -> None:
    """LimitedPriorityMachine's rules in fixed sequences (the search rarely reaches both):
    a deferral of a ``level`` delivery waits in that level's delayed set, comes back there
    and is handled; a delivery cancelled while pending is refused (2), dead-lettered."""
    LimitedPriorityMachine.url = redis_server.url
    m = LimitedPriorityMachine()
    try:
        m.send(level, 1, 0, 0)
        m.claim(PDEF, "c1", 1, False)
        m.rate_limited(0)  # granted now (the handler would start)
        m.rate_limited(0)  # asked again in the window: deferred
        assert not m.deliveries
        assert len(m.model.queues[LEVEL_NAMES[level]].delayed) == 1
        m.redis_agrees_with_the_model()
        m.time_passes(20)
        m.move_due(level)
        m.claim(PDEF, "c1", 1, False)
        ((back_level, back),) = m.deliveries
        assert back_level == level and back.entry.reserved is not None
        m.handler(0, "success", 0)
        m.send(level, 1, 0, 0)
        m.claim(PDEF, "c2", 1, False)
        m.cancel(level, "stream", 2)  # the third entry (the original, its copy, this)
        assert m.model.queues[LEVEL_NAMES[level]].cancelled
        m.rate_limited(0)  # deferred in the model's window: refused, dead-lettered
        assert LimitedPriorityMachine.limit_seen[f"level {level}: 2"] > 0
        assert [d.reason for d in m.model.queues[LEVEL_NAMES[level]].dlq] == ["cancelled"]
        m.redis_agrees_with_the_model()
    finally:
        m.teardown()


# -- regression tests: shrunk sequences of the state machine ---------------------------
# Each was found by the machine on the code before issue 11's fixes (each failed then).


@pytest.mark.anyio
async def test_move_to_dlq_of_an_undelivered_id_does_not_move_it(mq: LeanMQ) -> None:
    """Issue 11 item 5. transaction(q) -> move_to_dlq([id]) by q-group: it was never
    delivered, so no move."""
    q, dlq = await mq.create_queue_pair("q")
    (sid,) = await q.send_messages([{"k": 1}])
    result = await q.move_to_dlq([sid], "moved")
    assert _moved_count(result) == 0
    assert await dlq.peek_messages() == []
    assert [m.data for m in await q.get_messages(1)] == [{"k": 1}]


@pytest.mark.anyio
async def test_expiry_pass_dead_letters_once_per_group_with_its_name(mq: LeanMQ) -> None:
    """Issue 11 item 2. send(q, ttl=15) -> 20 s pass -> expiry pass "dlq": one DLQ entry
    per group (2 groups)."""
    q, dlq = await mq.create_queue_pair("q")
    await mq.store.ensure_groups([q.stream], ["B"])
    await q.send_message({"k": 1}, ttl=15)
    mq.store.clock_shift_ms = 20_000
    await mq.process_expired_messages(policy="dlq")
    dead = await dlq.peek_messages()
    assert sorted((m.data, m.dead_letter.group) for m in dead if m.dead_letter) == [
        ({"k": 1}, "B"),
        ({"k": 1}, "q-group"),
    ]


@pytest.mark.anyio
async def test_a_due_delayed_message_is_read_without_a_worker(mq: LeanMQ) -> None:
    """Issue 11 item 6. send(q, delay=5) -> 10 s pass -> get_messages returns it (no
    move_due call)."""
    q, _ = await mq.create_queue_pair("q")
    await q.send_message({"k": 1}, delay=5)
    mq.store.clock_shift_ms = 10_000
    assert [m.data for m in await q.get_messages(1)] == [{"k": 1}]


@pytest.mark.anyio
async def test_expiry_pass_leaves_a_delivered_message_to_its_handler(mq: LeanMQ) -> None:
    """Issue 11 item 1. transaction(r, ttl=15) -> read -> 20 s pass -> expiry pass "drop":
    the entry is pending (its handler runs), so it stays, and the handler's ack then counts."""
    r, _ = await mq.create_queue_pair("r")
    async with mq.transaction() as tx:
        tx.send_message(r, {"k": 1}, ttl=15)
    (message,) = await r.get_messages(1)
    mq.store.clock_shift_ms = 20_000
    assert await mq.process_expired_messages(policy="drop") == 0
    assert (await r.get_info()).pending_messages == 1
    assert await r.acknowledge_messages([message.id]) == 1


@pytest.mark.anyio
async def test_a_send_that_would_expire_before_it_is_visible_is_refused(mq: LeanMQ) -> None:
    """Found by the model (SEMANTICS: delay >= ttl is refused). send(q, ttl=15,
    delay=15): refused, nothing written."""
    q, _ = await mq.create_queue_pair("q")
    with pytest.raises(ConfigurationError):
        await q.send_message({"k": 1}, ttl=15, delay=15)
    assert (await q.get_info()).delayed_messages == 0


@pytest.mark.anyio
async def test_an_expired_message_handled_by_one_group_expires_for_the_other_later(
    mq: LeanMQ,
) -> None:
    """Found by the model's slow budget (its reference had no recheck interval): send(q,
    ttl=15) -> read by q-group -> 20 s pass -> expiry pass (pending: left, re-checked
    later) -> handler acks -> expiry pass before the recheck: nothing -> after it: expired
    for group B only, which never received it."""
    q, dlq = await mq.create_queue_pair("q")
    await mq.store.ensure_groups([q.stream], ["B"])
    await q.send_message({"k": 1}, ttl=15)
    (message,) = await q.get_messages(1)
    mq.store.clock_shift_ms = 20_000
    assert await mq.process_expired_messages(policy="dlq") == 0
    assert await q.acknowledge_messages([message.id]) == 1
    assert await mq.process_expired_messages(policy="dlq") == 0
    mq.store.clock_shift_ms = 30_000
    assert await mq.process_expired_messages(policy="dlq") == 1
    dead = await dlq.peek_messages()
    assert [(m.data, m.dead_letter.group) for m in dead if m.dead_letter] == [({"k": 1}, "B")]
