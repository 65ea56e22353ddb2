"""The reference model of test_model.py: what Redis should hold after each queue operation.

A plain-Python picture of one queue pair, coded to /work/wt/SEMANTICS.md (issue 11): the
stream in order (entries get increasing ``seq`` numbers instead of stream ids), each
group's read cursor and pending list, the delayed set, the expiry index and the DLQ. The
outcome of every (queue, message, group) pair is kept in :class:`Model.outcome`.

Idempotent sends (issue 17): a send with an explicit message id and a dedup window is
a no-op while an earlier send of that id to the same queue is less than its window old
(:meth:`Model.send` returns False); purge forgets the records.

Cancellation (issue 16 part 4): :meth:`Model.cancel` removes a message no group started
(delayed: one dead letter for every group it was for, '' = all; in the stream: one per group
that had not read it, and the entry is deleted; a retry a group scheduled of it, still
delayed: one for that group), or marks one some group holds pending (its
handler runs). A marked entry is never retried (:meth:`Model.retry` answers 2); the worker
dead-letters it with reason "cancelled" instead, and so does a group that reads it later.
Priorities (issue 16): each level of a queue is a queue of the model of its own (the
test names them ``p0``, ``p1``, ``p2``), sharing nothing but the DLQ; :meth:`Model.claim`
reads them in priority order.
Rate limits (issue 16): a handler over its limit defers its message (``lua/defer.lua``)
to the start the limiter granted (``lua/rate_limit.lua``): the copy waits in the delayed
set with its attempts unchanged and holds that reservation (field ``rl``, dropped by a
retry or a requeue); it is not a failure. The limiter of each (queue, group) is modelled
with its real sliding-log rule. A deferred copy's real due time is its model due time
plus the real ms of the "now" its chain of reservations started from, so delayed entries
are ordered by (due, order of that start): :meth:`Model.rate_limit`.

Time is the model's clock in ms (the test sets ``Store.clock_shift_ms`` to it); every
duration the test uses is 5 s off every multiple of 10 s while time moves in 10 s steps,
so the real milliseconds that pass during an example never decide anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPEN, HANDLED, DLQ, EXPIRED, REMOVED = "open", "handled", "dlq", "expired", "removed"


# process_expired_messages' default recheck interval (Store.expire's recheck_ms).
EXPIRY_RECHECK_MS = 1000


@dataclass
class Entry:
    """A stream entry (or a delayed one, before it is due)."""

    k: int
    target: str | None = None
    x: int | None = None
    attempts: int = 0
    seq: int = 0
    sid: str = ""
    due: int = 0
    order: int = 0
    reserved: int | None = None  # a rate-limit reservation it holds (model ms)


@dataclass
class DeadLetter:
    k: int | None  # None: a tombstone (the entry was gone)
    group: str
    reason: str
    sid: str = ""


@dataclass
class QueueModel:
    name: str
    groups: list[str]
    stream: dict[int, Entry] = field(default_factory=dict)
    expiry: dict[int, int] = field(default_factory=dict)  # seq -> x (may outlive the entry)
    delayed: list[Entry] = field(default_factory=list)
    cursor: dict[str, int] = field(default_factory=dict)
    pending: dict[str, dict[int, str]] = field(default_factory=dict)  # group -> seq -> consumer
    dlq: list[DeadLetter] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)  # message id -> end of its dedup window
    cancelled: set[int] = field(default_factory=set)  # seqs marked cancelled while running

    def __post_init__(self) -> None:
        for g in self.groups:
            self.cursor[g] = 0
            self.pending[g] = {}

    def aimed(self, e: Entry) -> list[str]:
        return [g for g in self.groups if e.target in (None, g)]

    def carries(self, e: Entry, g: str) -> bool:
        """Is ``e`` what (e.k, g) still waits on: aimed at g, unread by g or pending in g?"""
        return e.target in (None, g) and (e.seq > self.cursor[g] or e.seq in self.pending[g])

    def pending_anywhere(self, seq: int) -> bool:
        return any(seq in p for p in self.pending.values())


class Model:
    """Every queue of one example, the clock, and the outcome ledger."""

    def __init__(self, queues: dict[str, list[str]]) -> None:
        self.queues = {name: QueueModel(name, sorted(groups)) for name, groups in queues.items()}
        self.now = 0
        self._seq = 0
        self._order = 0
        self.outcome: dict[tuple[str, int, str], str] = {}
        # (queue, group) -> the limiter's log: (grant ms, order of the real clock it carries)
        self.limiter: dict[tuple[str, str], list[tuple[int, int]]] = {}

    # -- helpers -------------------------------------------------------------------------

    def _append(self, q: QueueModel, e: Entry) -> Entry:
        self._seq += 1
        e.seq, e.sid = self._seq, ""
        q.stream[e.seq] = e
        if e.x is not None:
            q.expiry[e.seq] = e.x
        return e

    def _set(self, q: QueueModel, k: int, g: str, state: str) -> None:
        self.outcome[(q.name, k, g)] = state

    # -- operations ----------------------------------------------------------------------

    def send(
        self, qname: str, k: int, ttl_ms: int, delay_ms: int, mid: str = "", dedup_ms: int = 0
    ) -> bool:
        """Send message ``k``; False (nothing written) when ``mid`` is a duplicate."""
        q = self.queues[qname]
        if dedup_ms:
            if q.sent.get(mid, 0) > self.now:
                return False
            q.sent[mid] = self.now + dedup_ms
        for g in q.groups:
            self._set(q, k, g, OPEN)
        e = Entry(k, None, self.now + ttl_ms if ttl_ms else None)
        if delay_ms:
            self._order += 1
            e.due, e.order = self.now + delay_ms, self._order
            q.delayed.append(e)
        else:
            self._append(q, e)
        return True

    def move_due(self, qname: str) -> int:
        q = self.queues[qname]
        due = sorted((e for e in q.delayed if e.due <= self.now), key=lambda e: (e.due, e.order))
        for e in due:
            q.delayed.remove(e)
            self._append(q, e)
        return len(due)

    def read(self, qname: str, g: str, consumer: str, count: int) -> list[Entry]:
        """``get_messages``: raw reads of ``count`` until one yields a message to hand out.

        Foreign copies (aimed at another group) and expired entries are acked, not returned.
        """
        q = self.queues[qname]
        while True:
            raw = [e for s, e in q.stream.items() if s > q.cursor[g]][:count]
            if not raw:
                return []
            q.cursor[g] = raw[-1].seq
            good = []
            for e in raw:
                if e.target not in (None, g):
                    continue
                if e.x is not None and e.x <= self.now:
                    self._set(q, e.k, g, EXPIRED)
                    continue
                q.pending[g][e.seq] = consumer
                good.append(e)
            if good:
                return good

    def claim(
        self, qnames: list[str], g: str, consumer: str, count: int
    ) -> list[tuple[str, Entry]]:
        """The worker's priority read (``Store.claim_new``, ``lua/claim.lua``): the unread
        entries of each level's queue in ``qnames``' order (highest priority first, or
        lowest first for the starvation guard), ``count`` in all. Every one becomes pending
        in ``g``, foreign copies and expired ones too: the worker settles those itself."""
        out: list[tuple[str, Entry]] = []
        for qname in qnames:
            q = self.queues[qname]
            raw = [e for s, e in q.stream.items() if s > q.cursor[g]][: count - len(out)]
            if raw:
                q.cursor[g] = raw[-1].seq
            for e in raw:
                q.pending[g][e.seq] = consumer
                out.append((qname, e))
        return out

    def skip(self, qname: str, g: str, seq: int) -> int:
        """The worker's ack of a copy aimed at another group: no outcome for ``g``."""
        return 1 if self.queues[qname].pending[g].pop(seq, None) is not None else 0

    def ack(self, qname: str, g: str, seq: int) -> int:
        q = self.queues[qname]
        if q.pending[g].pop(seq, None) is None:
            return 0
        e = q.stream.get(seq)
        if e is not None:
            self._set(q, e.k, g, HANDLED)
        return 1

    def retry(self, qname: str, g: str, consumer: str, seq: int, delay_ms: int) -> int:
        q = self.queues[qname]
        if q.pending[g].get(seq) != consumer:
            return -1
        if seq in q.cancelled:
            return 2  # cancelled: never retried, left pending for a dead_letter
        del q.pending[g][seq]
        e = q.stream.get(seq)
        if e is None:
            return 0
        copy = Entry(e.k, g, e.x, e.attempts + 1)
        if delay_ms:
            self._order += 1
            copy.due, copy.order = self.now + delay_ms, self._order
            copy.sid = f"{g}|{e.sid}"  # retry.lua's delayed member
            q.delayed.append(copy)
        else:
            self._append(q, copy)
        return 1

    def rate_limit(self, qname: str, g: str, limit: int, per_ms: int) -> tuple[int, int]:
        """``lua/rate_limit.lua`` for (queue, group): the start granted and its order.

        The grant is the latest of now, the last grant and the ``limit``-th last + ``per``;
        on a tie in model ms Redis takes the term carrying the later real clock (the
        larger order). It is granted now when it equals the model's now.
        """
        log = self.limiter.setdefault((qname, g), [])
        self._order += 1
        terms = [(self.now, self._order)]
        if log:
            terms.append(log[-1])
            if len(log) >= limit:
                t, order = log[-limit]
                terms.append((t + per_ms, order))
        grant = max(terms)
        log.append(grant)
        del log[:-limit]
        return grant

    def defer(self, qname: str, g: str, consumer: str, seq: int, grant: tuple[int, int]) -> int:
        """A handler over its rate limit: the copy waits until ``grant`` with its attempts
        unchanged, holding the reservation (``lua/defer.lua``, ownership-checked). A
        cancelled one is refused (2, as retry): left pending for a dead_letter, never run."""
        q = self.queues[qname]
        if q.pending[g].get(seq) != consumer:
            return -1
        if seq in q.cancelled:
            return 2
        del q.pending[g][seq]
        e = q.stream.get(seq)
        if e is None:
            return 0
        copy = Entry(e.k, g, e.x, e.attempts, reserved=grant[0])
        copy.due, copy.order = grant
        copy.sid = f"{g}|{e.sid}"  # defer.lua's delayed member: a cancel of e finds it
        q.delayed.append(copy)
        return 1

    def dead_letter(self, qname: str, g: str, consumer: str, seq: int, reason: str) -> int:
        """An ownership-checked move to the DLQ (a worker's Reject or failure)."""
        q = self.queues[qname]
        if q.pending[g].get(seq) != consumer:
            return 0
        del q.pending[g][seq]
        e = q.stream.get(seq)
        if e is None:
            q.dlq.append(DeadLetter(None, g, reason))
        else:
            q.dlq.append(DeadLetter(e.k, g, reason))
            self._set(q, e.k, g, EXPIRED if reason == "expired" else DLQ)
        return 1

    def cancel(self, qname: str, seq: int | None = None, delayed: Entry | None = None) -> str:
        """``Queue.cancel`` of a delayed entry or of stream entry ``seq``: its outcome."""
        q = self.queues[qname]
        if delayed is not None:
            q.delayed.remove(delayed)
            q.dlq.append(DeadLetter(delayed.k, delayed.target or "", "cancelled"))
            for g in q.aimed(delayed):
                self._set(q, delayed.k, g, DLQ)
            return "cancelled"
        e = q.stream.get(seq) if seq is not None else None
        if e is None or seq is None:
            return "not_found"
        aimed = q.aimed(e)
        waiting = [g for g in aimed if seq > q.cursor[g]]
        done = [g for g in aimed if seq <= q.cursor[g] and seq not in q.pending[g]]
        retries = [d for d in q.delayed if d.sid in {f"{g}|{e.sid}" for g in done}]
        for d in retries:  # a retry a group scheduled: removed, dead-lettered for it
            q.delayed.remove(d)
            q.dlq.append(DeadLetter(d.k, d.target or "", "cancelled"))
            self._set(q, d.k, d.target or "", DLQ)
        if any(seq in q.pending[g] for g in aimed):
            q.cancelled.add(seq)
            return "running"
        if not waiting:
            return "cancelled" if retries else "finished"
        for g in waiting:
            q.dlq.append(DeadLetter(e.k, g, "cancelled"))
            self._set(q, e.k, g, DLQ)
        del q.stream[seq]
        q.expiry.pop(seq, None)
        return "cancelled"

    def move_to_dlq(self, qname: str, g: str, seqs: list[int]) -> int:
        """A move is a move: only entries pending in ``g`` move."""
        q = self.queues[qname]
        moved = 0
        for seq in seqs:
            if seq in q.pending[g] and seq in q.stream:
                del q.pending[g][seq]
                e = q.stream[seq]
                q.dlq.append(DeadLetter(e.k, g, "moved"))
                self._set(q, e.k, g, DLQ)
                moved += 1
        return moved

    def delete(self, qname: str, g: str, seqs: list[int]) -> int:
        q = self.queues[qname]
        n = 0
        for seq in seqs:
            e = q.stream.get(seq)
            if e is not None:
                for h in q.groups:
                    if q.carries(e, h):
                        self._set(q, e.k, h, REMOVED)
                del q.stream[seq]
                n += 1
            q.pending[g].pop(seq, None)
            q.expiry.pop(seq, None)
        return n

    def purge(self, qname: str) -> int:
        q = self.queues[qname]
        for e in q.stream.values():
            for h in q.groups:
                if q.carries(e, h):
                    self._set(q, e.k, h, REMOVED)
        for e in q.delayed:
            for h in q.aimed(e):
                self._set(q, e.k, h, REMOVED)
        n = len(q.stream)
        q.stream.clear()
        q.expiry.clear()
        q.delayed.clear()
        q.sent.clear()
        for g in q.groups:
            q.cursor[g] = 0
            q.pending[g].clear()
        return n

    def requeue(self, qname: str, dead: DeadLetter) -> int:
        q = self.queues[qname]
        if dead.k is None:
            return 0
        q.dlq.remove(dead)
        target = dead.group or None
        e = self._append(q, Entry(dead.k, target))
        for g in q.aimed(e):
            self._set(q, dead.k, g, OPEN)
        return 1

    def expire(self, qname: str, policy: str) -> int:
        """The expiry pass: never touches an entry pending in a group; returns entries removed."""
        q = self.queues[qname]
        removed = 0
        for seq, x in sorted(q.expiry.items(), key=lambda item: (item[1], item[0])):
            if x > self.now:
                continue
            e = q.stream.get(seq)
            if e is None:
                del q.expiry[seq]
                continue
            if q.pending_anywhere(seq):
                # Left to its consumer, looked at again a recheck interval later (the
                # index is re-scored so pending entries never block the scan).
                q.expiry[seq] = self.now + EXPIRY_RECHECK_MS
                continue
            for g in q.aimed(e):
                if e.seq > q.cursor[g]:
                    self._set(q, e.k, g, EXPIRED)
                    if policy == "dlq":
                        q.dlq.append(DeadLetter(e.k, g, "expired"))
            del q.stream[seq]
            del q.expiry[seq]
            removed += 1
        return removed

    def trim(self, qname: str, max_age_ms: int) -> int:
        """Stream ids follow the real clock: entries are all 'now' to it, so either every
        entry is older than ``max_age`` (the model clock passed it) or none is."""
        q = self.queues[qname]
        if self.now <= max_age_ms:
            return 0
        safe = min(min(q.pending[g]) if q.pending[g] else q.cursor[g] + 1 for g in q.groups)
        doomed = [s for s in q.stream if s < safe]
        for s in doomed:
            del q.stream[s]
        return len(doomed)

    def reclaim(self, qname: str, g: str, dead: str, consumer: str) -> tuple[list[Entry], int]:
        """Claim every entry ``dead`` holds in ``g``; return (claimed, missing count)."""
        q = self.queues[qname]
        claimed, missing = [], 0
        for seq in sorted(s for s, c in q.pending[g].items() if c == dead):
            if seq in q.stream:
                q.pending[g][seq] = consumer
                claimed.append(q.stream[seq])
            else:
                del q.pending[g][seq]
                missing += 1
        return claimed, missing
