"""``leanmq migrate``: move LeanMQ 0.2 queues into leanmq_async's layout, nothing lost.

For each LeanMQ 0.2 queue (found by :func:`~leanmq_async.legacy.find_legacy_queues`):

1. the leanmq_async queue pair of the same name is created (groups read from the start);
2. *pending* entries (delivered to a 0.2 consumer, never acked) are moved first: they
   become waiting entries, delivered again (at-least-once);
3. *waiting* entries (after the 0.2 group's last-delivered id), in stream order;
4. *dead* entries (the 0.2 DLQ stream) into the leanmq_async DLQ, with their reason.

Acknowledged history (0.2 acks without deleting) stays where it is and is never moved.

Each step is one call of ``lua/migrate_step.lua`` on at most ``batch`` entries: the new
entry is written and the old one removed (XDEL, its expiry member removed, XACK when
pending) in one atomic script, and the script re-checks every entry, so a step re-run
after a kill (-9) finds only what is left: no loss, no duplicate.

What is kept: the payload (the 0.2 ``data`` minus ``_metadata``, byte-for-byte JSON of
the same values), the message id (``_metadata.id``) and timestamp, the stream id (kept
when it still sorts last in the new stream, and always in the header ``leanmq02.id``),
the TTL (the 0.2 expiry time becomes the ``x`` field and the expiry index entry), and
for dead letters the reason and time of the last failure (``dlq.reason``, ``dlq.at``;
the whole ``_failures`` list in the header ``leanmq02.failures``). An entry that is not
a LeanMQ 0.2 message is moved with its fields unchanged (the worker then dead-letters
it as undecodable: visible, not lost); so is a payload leanmq_async cannot carry exactly
(NaN or Infinity, which LeanMQ 0.2's ``json`` wrote), whose reason says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from leanmq_async.connection import translate_errors
from leanmq_async.envelope import FIELD_EXPIRES, FIELD_JSON, Envelope
from leanmq_async.exceptions import ConfigurationError, QueueNotFoundError
from leanmq_async.keys import QueueKeys, legacy_registry_key, registry_key
from leanmq_async.legacy import LegacyQueue, find_legacy_queues
from leanmq_async.replies import parse_migrate_step, text

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = [
    "DEFAULT_BATCH",
    "MigrationReport",
    "convert_entry",
    "migrate",
    "migrate_queue",
    "migrate_registry",
]

DEFAULT_BATCH: Final = 100


class MigrationReport(msgspec.Struct, kw_only=True):
    """What was (or, in a dry run, would be) moved for one LeanMQ 0.2 queue."""

    queue: str
    dry_run: bool
    waiting: int = 0
    pending: int = 0
    dead: int = 0
    skipped: int = 0
    """Entries a LeanMQ 0.2 consumer took or acknowledged meanwhile (left to it)."""
    gone: int = 0
    """Entries deleted meanwhile (by a LeanMQ 0.2 consumer or its expiry)."""
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def _id_seconds(sid: str) -> float:
    return int(sid.split("-", 1)[0]) / 1000


def convert_entry(
    sid: str,
    fields: dict[bytes, bytes],
    expires_at: float | None,
    *,
    queue: str,
    dead: bool,
) -> list[bytes]:
    """The leanmq_async stream fields for one LeanMQ 0.2 entry (a flat field/value list).

    ``expires_at``: its score in the 0.2 expiry index (unix seconds), if any.
    """
    raw = fields.get(b"data")
    data: Any = None
    if raw is not None:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    if not isinstance(data, dict):  # not a LeanMQ 0.2 message: moved as it is
        return [v for kv in fields.items() for v in kv]
    meta = data.pop("_metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    failures = data.pop("_failures", None) if dead else None
    headers = {"leanmq02.id": sid}
    if failures is not None:
        headers["leanmq02.failures"] = json.dumps(failures)
    try:
        ts = float(meta.get("timestamp") or _id_seconds(sid))
    except (TypeError, ValueError):
        ts = _id_seconds(sid)
    try:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate (from a "\ud800" escape): keep it escaped
        payload = json.dumps(data, separators=(",", ":")).encode()
    envelope = Envelope(id=str(meta.get("id") or sid), ts=ts, p=msgspec.Raw(payload), h=headers)
    out = [FIELD_JSON, msgspec.json.encode(envelope)]
    if expires_at is not None:
        out += [FIELD_EXPIRES, str(round(expires_at * 1000)).encode()]
    if dead:
        last = failures[-1] if isinstance(failures, list) and failures else {}
        last = last if isinstance(last, dict) else {}
        try:
            at = float(last.get("timestamp") or ts)
        except (TypeError, ValueError):
            at = ts
        count = len(failures) if isinstance(failures, list) else 0
        reason = str(last.get("reason") or "dead-lettered by LeanMQ 0.2")
        out += [
            b"dlq.reason", reason.encode(),
            b"dlq.error", b"",
            b"dlq.traceback", b"",
            b"dlq.attempts", str(count).encode(),
            b"dlq.at", f"{at:.6f}".encode(),
            b"dlq.queue", queue.encode(),
            b"dlq.id", b"",
            b"dlq.group", b"",
        ]  # fmt: skip
    return out


class _Mover:
    """Runs ``lua/migrate_step.lua`` for one queue, batch by batch."""

    def __init__(self, mq: LeanMQ, legacy: LegacyQueue, batch: int, min_idle_ms: int) -> None:
        self.min_idle_ms = min_idle_ms
        self.mq = mq
        self.client: Any = mq.store.client
        self.legacy = legacy
        self.batch = batch
        self.keys = QueueKeys(mq.prefix, legacy.name)
        self.script = mq.store.scripts.migrate_step

    async def _read(self, stream: str, ids: Sequence[str]) -> list[tuple[str, dict[bytes, bytes]]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.xrange(stream, sid, sid)
            replies = await pipe.execute()
        return [(sid, dict(r[0][1]) if r else {}) for sid, r in zip(ids, replies, strict=True)]

    async def _step(
        self,
        stream: str,
        group: str,
        entries: list[tuple[str, dict[bytes, bytes]]],
        *,
        dead: bool,
        report: MigrationReport,
        mode: str = "main",
    ) -> int:
        expiry = f"{stream}:expiry"
        async with self.client.pipeline(transaction=False) as pipe:
            for sid, _ in entries:
                pipe.zscore(expiry, sid)
            scores = await pipe.execute()
        args: list[Any] = [group, "dlq" if dead else mode, len(entries)]
        for (sid, fields), score in zip(entries, scores, strict=True):
            values = (
                convert_entry(
                    sid,
                    fields,
                    None if score is None else float(score),
                    queue=self.legacy.name,
                    dead=dead,
                )
                if fields
                else []
            )
            args += [sid, len(values), *values]
        new = self.keys.dlq if dead else self.keys.stream
        keys = [stream, expiry, new, self.keys.expiry_of(new)]
        step = parse_migrate_step(await self.script(keys=keys, args=args))
        moved, acked, gone = step.moved, step.acked, step.gone
        report.skipped += acked
        report.gone += gone
        report.steps += 1
        return moved

    async def pending(self, report: MigrationReport) -> None:
        q = self.legacy
        while True:
            try:
                rows = await self.client.xpending_range(
                    q.stream, q.group, "-", "+", self.batch, idle=self.min_idle_ms or None
                )
            except Exception as exc:
                if "NOGROUP" in str(exc) or "no such key" in str(exc):
                    return
                raise
            if not rows:
                return
            ids = [text(r["message_id"]) for r in rows]
            report.pending += await self._step(
                q.stream, q.group, await self._read(q.stream, ids), dead=False, report=report
            )

    async def _last_delivered(self) -> str | None:
        q = self.legacy
        try:
            groups = await self.client.xinfo_groups(q.stream)
        except Exception as exc:
            if "no such key" in str(exc):
                return None
            raise
        for g in groups:
            if text(g.get("name")) == q.group:
                return text(g.get("last-delivered-id"))
        return None

    async def waiting(self, report: MigrationReport) -> None:
        q = self.legacy
        last = await self._last_delivered()
        start = "-" if last is None else f"({last}"
        group = q.group if last is not None else ""
        while True:
            rows = await self.client.xrange(q.stream, start, "+", count=self.batch)
            if not rows:
                return
            entries = [(text(sid), dict(fields)) for sid, fields in rows]
            report.waiting += await self._step(
                q.stream, group, entries, dead=False, report=report, mode="waiting"
            )
            start = f"({entries[-1][0]}"

    async def dead(self, report: MigrationReport) -> None:
        q = self.legacy
        start = "-"
        while True:
            rows = await self.client.xrange(q.dlq_stream, start, "+", count=self.batch)
            if not rows:
                return
            entries = [(text(sid), dict(fields)) for sid, fields in rows]
            report.dead += await self._step(
                q.dlq_stream, q.dlq_group, entries, dead=True, report=report
            )
            start = f"({entries[-1][0]}"


async def migrate_queue(
    mq: LeanMQ,
    legacy: LegacyQueue,
    *,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    min_idle: float = 0.0,
) -> MigrationReport:
    """Move one LeanMQ 0.2 queue (pending, waiting, then DLQ); safe to re-run any time.

    ``min_idle``: move only pending entries idle this many seconds (the bridge's way to
    leave a live LeanMQ 0.2 consumer its messages); 0 moves every one.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"batch must be a positive integer, got {batch!r}")
    if not legacy.migratable:
        raise ConfigurationError(f"LeanMQ 0.2 queue {legacy.name!r} cannot move: {legacy.problem}")
    report = MigrationReport(queue=legacy.name, dry_run=dry_run)
    if dry_run:
        report.waiting, report.pending, report.dead = legacy.waiting, legacy.pending, legacy.dead
        return report
    if mq.store.cluster:
        raise ConfigurationError("migration needs a standalone Redis (LeanMQ 0.2's own setup)")
    await mq.create_queue_pair(legacy.name)
    mover = _Mover(mq, legacy, batch, round(min_idle * 1000))
    with translate_errors("migrate"):
        await mover.pending(report)
        await mover.waiting(report)
        await mover.dead(report)
    return report


async def migrate_registry(mq: LeanMQ, *, dry_run: bool = False) -> int:
    """Move this library's own names out of the old registry key (LeanMQ 0.2's key).

    Earlier versions kept their registry in ``{prefix}registry``; its members whose
    ``:meta`` hash exists are added to the new registry, then removed from the old key
    (LeanMQ 0.2's members are left untouched). Returns how many were (or would be) moved.
    """
    client: Any = mq.store.client
    old = legacy_registry_key(mq.prefix)
    with translate_errors("migrate registry"):
        if text(await client.type(old)) != "set":
            return 0
        names = sorted(text(m) for m in await client.smembers(old))
        ours = [n for n in names if await client.exists(QueueKeys(mq.prefix, n).meta)]
        if ours and not dry_run:
            await client.sadd(registry_key(mq.prefix), *ours)
            await client.srem(old, *ours)
    return len(ours)


async def migrate(
    mq: LeanMQ,
    queues: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
) -> list[MigrationReport]:
    """Migrate the LeanMQ 0.2 queues named (``None``: every one found under the prefix)."""
    found = {q.name: q for q in await find_legacy_queues(mq)}
    if queues is None:
        chosen = [q for q in found.values() if q.migratable]
    else:
        missing = [n for n in queues if n not in found]
        if missing:
            raise QueueNotFoundError(
                f"no LeanMQ 0.2 queue {missing[0]!r} under prefix {mq.prefix!r} "
                f"(found: {', '.join(sorted(found)) or 'none'})"
            )
        chosen = [found[n] for n in queues]
    return [await migrate_queue(mq, q, dry_run=dry_run, batch=batch) for q in chosen]
