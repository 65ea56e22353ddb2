"""The Lua scripts that make every multi-step move atomic.

Each script touches the keys of one queue only (one hash tag, see :mod:`leanmq_async.keys`),
so it also runs on Redis Cluster. Times come from the Redis clock (``TIME``), never from a
client's. Stream entries are copied field by field, so a garbled entry is moved intact.
Delayed entries are stored as ``cmsgpack``-packed field lists.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CREATE_GROUPS",
    "DEAD_LETTER",
    "DELETE_IDLE_CONSUMER",
    "EXPIRE",
    "EXPIRE_READ",
    "EXTEND_LEASES",
    "MOVE_DUE",
    "PURGE",
    "RECLAIM",
    "REQUEUE",
    "RETRY",
    "SEND",
    "TRIM",
]

_PRELUDE = r"""
-- The Redis clock in ms. ``shift`` (an ARGV the script names; always 0 in production)
-- moves it forward, so a test can let time pass without waiting (Store.clock_shift_ms).
local function now_ms(shift)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + (tonumber(shift) or 0)
end
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function owned_by(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
local function pending_in(stream, group, id)
  -- pcall: a missing stream or group means nothing is pending (XPENDING would fail).
  local ok, p = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  return ok and p[1] ~= nil
end
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function id_less(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end
-- Checked before the first write: a script that fails half-way keeps what it wrote,
-- so a wrong-typed key must stop it while nothing has changed yet.
local function check_types(keys, types)
  for i, key in ipairs(keys) do
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'none' and t ~= types[i] then
      return 'WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a ' .. types[i]
    end
  end
  return nil
end
-- Lua's unpack fails at ~8,000 values: commands that take a caller-sized list of ids
-- get them in slices of at most 1,000, one ``call(slice)`` each.
local function in_slices(ids, call)
  for i = 1, #ids, 1000 do
    call({unpack(ids, i, math.min(i + 999, #ids))})
  end
end
local function groups_of(stream)
  if redis.call('EXISTS', stream) == 0 then return {} end
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    out[#out + 1] = info
  end
  return out
end
"""

# KEYS: per queue [stream, expiry, delayed, delayed_data, dedup, dedup_until]
# ARGV: n_ops, then per op: queue index (1-based), ttl_ms, delay_ms, field, body, member,
#       message_id, dedup_ms (0: not deduplicated); last: clock shift (ms)
# All or nothing: every key's type is checked before anything is written, and a write
# that fails all the same (an XADD on a stream whose last id is the largest possible one)
# undoes every write before it, so a batch (a transaction, or send_messages) is written
# whole or not at all. Returns the stream ids (or delayed members), then the 1-based
# positions of the ops that were duplicates. A delayed member is prefixed with the send
# time and the op's index: entries due at the same millisecond sort by member, so this
# keeps them in the order they were sent.
# Idempotent sends: an op with dedup_ms > 0 whose message_id was sent to the same queue
# less than its window ago writes nothing and returns the first send's id. The record
# ("<until> <id>" in the dedup hash, <until> in the dedup:until zset) is swept once
# expired, a few per call; both keys expire after the longest window of their last send.
SEND: Final = (
    _PRELUDE
    + r"""
local expected = {'stream', 'zset', 'zset', 'hash', 'hash', 'zset'}
local n = tonumber(ARGV[1])
local deduped = {}  -- queue index (0-based) -> true: one of its ops is deduplicated
for op = 0, n - 1 do
  if tonumber(ARGV[9 + op * 8]) > 0 then deduped[tonumber(ARGV[2 + op * 8]) - 1] = true end
end
local new_streams = {}
for i = 1, #KEYS do
  local role = ((i - 1) % 6) + 1
  if role < 5 or deduped[math.floor((i - 1) / 6)] then
    local t = redis.call('TYPE', KEYS[i])['ok']
    local want = expected[role]
    if t ~= 'none' and t ~= want then
      return redis.error_reply(
        'WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
    end
    if t == 'none' and want == 'stream' then new_streams[#new_streams + 1] = KEYS[i] end
  end
end
local now = now_ms(ARGV[2 + n * 8])
local out, dups = {}, {}
-- What was written so far, to remove again if a later write fails: {command, key, member}.
local undo = {}
local function write(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    for i = #undo, 1, -1 do redis.call(undo[i][1], undo[i][2], undo[i][3]) end
    -- XDEL leaves an empty stream behind: remove the streams this script created.
    for _, key in ipairs(new_streams) do redis.call('DEL', key) end
    return nil, r.err .. ' (' .. cmd .. ' ' .. key .. '; nothing of this batch was written)'
  end
  return r, nil
end
local swept, longest = {}, {}
local function first_send(base, mid)
  local h, z = KEYS[base + 5], KEYS[base + 6]
  if not swept[base] then
    swept[base] = true
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100 + 2 * n)
    in_slices(old, function(ids) redis.call('HDEL', h, unpack(ids)) end)
    in_slices(old, function(ids) redis.call('ZREM', z, unpack(ids)) end)
  end
  local until_ms, id = string.match(redis.call('HGET', h, mid) or '', '^(%d+) (.*)$')
  if until_ms and tonumber(until_ms) > now then return id end
  return nil
end
for op = 0, n - 1 do
  local b = 2 + op * 8
  local base = (tonumber(ARGV[b]) - 1) * 6
  local ttl, delay = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local mid, dedup = ARGV[b + 6], tonumber(ARGV[b + 7])
  local fields = {ARGV[b + 3], ARGV[b + 4]}
  if ttl > 0 then
    fields[3] = 'x'
    fields[4] = tostring(now + ttl)
  end
  local done, err, sent
  if dedup > 0 then sent = first_send(base, mid) end
  if sent then
    out[#out + 1] = sent
    dups[#dups + 1] = op + 1
  elseif delay > 0 then
    local member = string.format('%015.0f%06d|', now, op) .. ARGV[b + 5]
    done, err = write('ZADD', KEYS[base + 3], now + delay, member)
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'ZREM', KEYS[base + 3], member}
    done, err = write('HSET', KEYS[base + 4], member, cmsgpack.pack(fields))
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'HDEL', KEYS[base + 4], member}
    out[#out + 1] = member
  else
    local id
    id, err = write('XADD', KEYS[base + 1], '*', unpack(fields))
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'XDEL', KEYS[base + 1], id}
    if ttl > 0 then
      done, err = write('ZADD', KEYS[base + 2], now + ttl, id)
      if err then return redis.error_reply(err) end
      undo[#undo + 1] = {'ZREM', KEYS[base + 2], id}
    end
    out[#out + 1] = id
  end
  if dedup > 0 and not sent then
    done, err = write('HSET', KEYS[base + 5], mid, string.format('%.0f ', now + dedup) .. out[#out])
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'HDEL', KEYS[base + 5], mid}
    done, err = write('ZADD', KEYS[base + 6], now + dedup, mid)
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'ZREM', KEYS[base + 6], mid}
    longest[base] = math.max(longest[base] or 0, dedup)
  end
end
for base, ms in pairs(longest) do
  for k = base + 5, base + 6 do
    if redis.call('PTTL', KEYS[k]) < ms then redis.call('PEXPIRE', KEYS[k], ms) end
  end
end
for _, pos in ipairs(dups) do out[#out + 1] = pos end
return out
"""
)

# KEYS: stream, delayed, delayed_data, expiry    ARGV: limit, clock shift (ms)
# Moves due delayed entries (delays and retries) into the stream.
# Returns {moved, ms until the next due entry or -1}.
MOVE_DUE: Final = (
    _PRELUDE
    + r"""
local bad = check_types(KEYS, {'stream', 'zset', 'hash', 'zset'})
if bad then return redis.error_reply(bad) end
local now = now_ms(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, member in ipairs(due) do
  local packed = redis.call('HGET', KEYS[3], member)
  if packed then
    local fields = cmsgpack.unpack(packed)
    local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
    local x = field(fields, 'x')
    if x then redis.call('ZADD', KEYS[4], x, id) end
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {moved, wait}
"""
)

# KEYS: stream, delayed, delayed_data, expiry
# ARGV: group, consumer, id, delay_ms, attempts, clock shift (ms)
# Acks the entry and schedules a copy (with attempts set, targeted at this group) in one
# step. Returns 1 when scheduled, 0 when the entry is gone (acked anyway), -1 when this
# consumer no longer owns it (its lease was taken over: nothing is done).
RETRY: Final = (
    _PRELUDE
    + r"""
local stream, group, consumer, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local bad = check_types(KEYS, {'stream', 'zset', 'hash', 'zset'})
if bad then return redis.error_reply(bad) end
if not owned_by(stream, group, id, consumer) then return -1 end
local entry = redis.call('XRANGE', stream, id, id)
if entry[1] == nil or entry[1][2] == nil then
  redis.call('XACK', stream, group, id)
  return 0
end
local old, fields = entry[1][2], {}
for i = 1, #old, 2 do
  if old[i] ~= 'a' and old[i] ~= 'g' then
    fields[#fields + 1] = old[i]
    fields[#fields + 1] = old[i + 1]
  end
end
fields[#fields + 1] = 'a'
fields[#fields + 1] = ARGV[5]
fields[#fields + 1] = 'g'
fields[#fields + 1] = group
local delay = tonumber(ARGV[4])
if delay > 0 then
  local member = group .. '|' .. id
  redis.call('ZADD', KEYS[2], now_ms(ARGV[6]) + delay, member)
  redis.call('HSET', KEYS[3], member, cmsgpack.pack(fields))
else
  local new = redis.call('XADD', stream, '*', unpack(fields))
  local x = field(fields, 'x')
  if x then redis.call('ZADD', KEYS[4], x, new) end
end
redis.call('XACK', stream, group, id)
return 1
"""
)

# KEYS: stream, dlq
# ARGV: group, consumer ('' = any consumer of the group), source queue name, n,
#       then per id: id, reason, error_type, traceback, attempts
# Copies each entry pending in the group (owned by ``consumer``, if given) to the DLQ with
# its failure metadata and acks it, together: a move, never a copy of an entry the group
# has not been delivered or has already acked. An entry already gone from the stream but
# still pending (delivered, then deleted) leaves a tombstone (dlq.missing = 1): the loss is
# recorded, never hidden. Reply: one status per id, in order: 'moved', 'not_owned' (held by
# another consumer), 'not_pending' (in the stream, not pending in the group: never
# delivered, or acked) or 'not_found' (neither in the stream nor pending).
DEAD_LETTER: Final = (
    _PRELUDE
    + r"""
local stream, dlq, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local bad = check_types(KEYS, {'stream', 'stream'})
if bad then return redis.error_reply(bad) end
local t = redis.call('TIME')
local at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local out = {}
for k = 0, tonumber(ARGV[4]) - 1 do
  local b = 5 + k * 5
  local id = ARGV[b]
  local entry = redis.call('XRANGE', stream, id, id)
  local exists = entry[1] ~= nil and entry[1][2] ~= nil
  local status = 'moved'
  if consumer ~= '' then
    if not owned_by(stream, group, id, consumer) then status = 'not_owned' end
  elseif not pending_in(stream, group, id) then
    status = exists and 'not_pending' or 'not_found'
  end
  if status == 'moved' then
    local fields = {'dlq.missing', '1'}
    if exists then
      fields = {}
      for i, v in ipairs(entry[1][2]) do fields[i] = v end
    end
    local meta = {'dlq.reason', ARGV[b + 1], 'dlq.error', ARGV[b + 2], 'dlq.traceback',
      ARGV[b + 3], 'dlq.attempts', ARGV[b + 4], 'dlq.at', at, 'dlq.queue', ARGV[3],
      'dlq.id', id, 'dlq.group', group}
    for _, v in ipairs(meta) do fields[#fields + 1] = v end
    redis.call('XADD', dlq, '*', unpack(fields))
    redis.call('XACK', stream, group, id)
  end
  out[#out + 1] = status
end
return out
"""
)

# KEYS: dlq, stream, expiry    ARGV: dlq_group, ids...
# Moves entries from the DLQ back to the main stream (metadata, attempts and expiry
# dropped; targeted at the group that failed them, if one did) and removes them from the
# DLQ. A tombstone (nothing but dlq.* fields) has nothing to requeue and stays in the DLQ.
REQUEUE: Final = (
    _PRELUDE
    + r"""
local bad = check_types({KEYS[1], KEYS[2]}, {'stream', 'stream'})
if bad then return redis.error_reply(bad) end
local moved = 0
for k = 2, #ARGV do
  local id = ARGV[k]
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if entry[1] ~= nil and entry[1][2] ~= nil then
    local old, fields, target = entry[1][2], {}, nil
    for i = 1, #old, 2 do
      local name = old[i]
      if name == 'dlq.group' then target = old[i + 1] end
      if string.sub(name, 1, 4) ~= 'dlq.' and name ~= 'a' and name ~= 'x' and name ~= 'g' then
        fields[#fields + 1] = name
        fields[#fields + 1] = old[i + 1]
      end
    end
    if #fields > 0 then
      -- '' (expired entries) means no group failed it: every group gets it again.
      if target and target ~= '' then
        fields[#fields + 1] = 'g'
        fields[#fields + 1] = target
      end
      redis.call('XADD', KEYS[2], '*', unpack(fields))
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      moved = moved + 1
    end
  end
end
return moved
"""
)

# KEYS: stream, expiry, dlq
# ARGV: limit, policy ('drop' | 'dlq'), source queue name, clock shift (ms), recheck_ms,
#       then optional pairs: group, that group's policy (overrides ``policy`` for it)
# One bounded pass over the expiry index: at most ``limit`` entries whose ``x`` is due.
# * An entry pending in any group (delivered, not settled) is never touched: that
#   group's consumer settles it. It is re-scored to now + recheck_ms, so it is looked at
#   again later and never blocks the front of the index.
# * An entry pending in no group is removed (XDEL, ZREM). Every group it is aimed at
#   (only the group of its ``g`` field, if it has one; else every group of the stream)
#   that was never delivered it has it expired unhandled: dropped, or, where that
#   group's policy is 'dlq', one DLQ entry with dlq.group = that group. A stream with
#   no group at all counts as one group named ''.
#   Every copy to the DLQ is written before anything is removed or re-scored: if a write
#   fails, the script stops with the stream and the index untouched.
# * An index member whose entry is gone from the stream is only removed from the index.
# Returns {scanned, removed, unhandled, rechecked, left}: index members looked at (==
# limit: there may be more), entries deleted, entries that expired unhandled for at least
# one group (dead-lettered or dropped), pending entries re-scored, and index members
# still due after this call (counted up to ``limit``; 0 after a short batch).
EXPIRE: Final = (
    _PRELUDE
    + r"""
local policy_of = {}
local to_dlq = ARGV[2] == 'dlq'
for k = 6, #ARGV - 1, 2 do
  policy_of[ARGV[k]] = ARGV[k + 1]
  if ARGV[k + 1] == 'dlq' then to_dlq = true end
end
local function dead_letters(group) return (policy_of[group] or ARGV[2]) == 'dlq' end
local bad = check_types(to_dlq and KEYS or {KEYS[1], KEYS[2]}, {'stream', 'zset', 'stream'})
if bad then return redis.error_reply(bad) end
local now = now_ms(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids == 0 then return {0, 0, 0, 0, 0} end
local groups = groups_of(KEYS[1])
local by_name = {}
for _, g in ipairs(groups) do by_name[g['name']] = g end
-- Per id: 'gone', 'pending', or the list of groups it expired unhandled for.
local plan = {}
for i, id in ipairs(ids) do
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if entry[1] == nil or entry[1][2] == nil then
    plan[i] = 'gone'
  else
    local pending = false
    for _, g in ipairs(groups) do
      if redis.call('XPENDING', KEYS[1], g['name'], id, id, 1)[1] ~= nil then
        pending = true
        break
      end
    end
    if pending then
      plan[i] = 'pending'
    else
      local fields = entry[1][2]
      local target = field(fields, 'g')
      local missed = {}
      if target then
        local g = by_name[target]
        if g == nil or id_less(g['last-delivered-id'], id) then missed[1] = target end
      elseif #groups == 0 then
        missed[1] = ''
      else
        for _, g in ipairs(groups) do
          if id_less(g['last-delivered-id'], id) then missed[#missed + 1] = g['name'] end
        end
      end
      plan[i] = {fields = fields, missed = missed}
    end
  end
end
if to_dlq then
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  for i, id in ipairs(ids) do
    local p = plan[i]
    if type(p) == 'table' then
      for _, group in ipairs(p.missed) do
        if dead_letters(group) then
          local fields = {}
          for k, v in ipairs(p.fields) do fields[k] = v end
          local meta = {'dlq.reason', 'expired', 'dlq.error', 'Expired', 'dlq.traceback', '',
            'dlq.attempts', '0', 'dlq.at', at, 'dlq.queue', ARGV[3], 'dlq.id', id,
            'dlq.group', group}
          for _, v in ipairs(meta) do fields[#fields + 1] = v end
          redis.call('XADD', KEYS[3], '*', unpack(fields))
        end
      end
    end
  end
end
local removed, unhandled, rechecked = 0, 0, 0
local recheck_at = now + tonumber(ARGV[5])
for i, id in ipairs(ids) do
  local p = plan[i]
  if p == 'pending' then
    redis.call('ZADD', KEYS[2], recheck_at, id)
    rechecked = rechecked + 1
  else
    if p ~= 'gone' then
      removed = removed + redis.call('XDEL', KEYS[1], id)
      if #p.missed > 0 then unhandled = unhandled + 1 end
    end
    redis.call('ZREM', KEYS[2], id)
  end
end
-- No ZCOUNT (not in the documented command set of a least-privilege user): a short
-- batch saw everything due, a full one counts what is still due, up to the limit.
local left = 0
if #ids == tonumber(ARGV[1]) then
  left = #redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
end
return {#ids, removed, unhandled, rechecked, left}
"""
)

# KEYS: stream, dlq
# ARGV: group, consumer, policy ('drop' | 'dlq'), source queue name, clock shift (ms),
#       id, expires_at_ms (the entry's ``x``)
# A reader's estimate said the entry it read is expired: the Redis clock decides. If
# ``x`` is still ahead of it (now_ms(shift) < x) nothing is done and 0 is returned: the
# reader handles the entry normally. Otherwise, if this consumer still owns the entry,
# it is settled as expired for this group: acked (policy 'drop') or copied to the DLQ
# with dlq.reason 'expired' and dlq.group = group, and acked (policy 'dlq'); returns 1.
# Returns -1 when expired but no longer owned by this consumer (nothing done).
EXPIRE_READ: Final = (
    _PRELUDE
    + r"""
local stream, dlq, group, consumer, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[6]
if now_ms(ARGV[5]) < tonumber(ARGV[7]) then return 0 end
if not owned_by(stream, group, id, consumer) then return -1 end
if ARGV[3] == 'dlq' then
  local bad = check_types(KEYS, {'stream', 'stream'})
  if bad then return redis.error_reply(bad) end
  local entry = redis.call('XRANGE', stream, id, id)
  local fields = {'dlq.missing', '1'}
  if entry[1] ~= nil and entry[1][2] ~= nil then
    fields = {}
    for i, v in ipairs(entry[1][2]) do fields[i] = v end
  end
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  local meta = {'dlq.reason', 'expired', 'dlq.error', 'Expired', 'dlq.traceback', '',
    'dlq.attempts', '0', 'dlq.at', at, 'dlq.queue', ARGV[4], 'dlq.id', id, 'dlq.group', group}
  for _, v in ipairs(meta) do fields[#fields + 1] = v end
  redis.call('XADD', dlq, '*', unpack(fields))
end
redis.call('XACK', stream, group, id)
return 1
"""
)

# KEYS: stream    ARGV: group, consumer, min_idle_ms, count, start, owner ('' = any)
# Claims entries idle longer than min_idle_ms (held by ``owner`` only, if given: a worker
# recovers its own pending entries at start with owner = its own name). Returns
# {entries, {id, delivery_count, ...}, missing ids, next start ('' when the scan is done)}.
# Missing ids are entries deleted from the stream while pending; they are acked here so
# the pending list is cleaned, and returned so the caller reports the loss.
RECLAIM: Final = (
    _PRELUDE
    + r"""
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local count = tonumber(ARGV[4])
local pend
if ARGV[6] ~= nil and ARGV[6] ~= '' then
  pend = redis.call('XPENDING', stream, group, 'IDLE', ARGV[3], ARGV[5], '+', count, ARGV[6])
else
  pend = redis.call('XPENDING', stream, group, 'IDLE', ARGV[3], ARGV[5], '+', count)
end
if #pend == 0 then return {{}, {}, {}, ''} end
local ids, deliveries = {}, {}
for i, p in ipairs(pend) do
  ids[i] = p[1]
  deliveries[p[1]] = p[4] + 1
end
local claimed = {}
in_slices(ids, function(slice)
  for _, e in ipairs(redis.call('XCLAIM', stream, group, consumer, ARGV[3], unpack(slice))) do
    claimed[#claimed + 1] = e
  end
end)
local entries, counts, seen = {}, {}, {}
for _, e in ipairs(claimed) do
  if e[2] ~= nil and e[2] ~= false then
    entries[#entries + 1] = e
    counts[#counts + 1] = e[1]
    counts[#counts + 1] = deliveries[e[1]]
    seen[e[1]] = true
  end
end
local missing = {}
for _, id in ipairs(ids) do
  if not seen[id] and redis.call('XRANGE', stream, id, id)[1] == nil then
    missing[#missing + 1] = id
    redis.call('XACK', stream, group, id)
  end
end
local nxt = ''
if #pend == count then nxt = '(' .. pend[#pend][1] end
return {entries, counts, missing, nxt}
"""
)

# KEYS: stream    ARGV: group, consumer, ids...
# Resets the idle time of entries this consumer still owns (no delivery count change).
# Returns the ids it no longer owns (their lease was lost to another consumer).
EXTEND_LEASES: Final = (
    _PRELUDE
    + r"""
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local mine, lost = {}, {}
for k = 3, #ARGV do
  if owned_by(stream, group, ARGV[k], consumer) then
    mine[#mine + 1] = ARGV[k]
  else
    lost[#lost + 1] = ARGV[k]
  end
end
-- XCLAIM takes its options after the ids: key group consumer min-idle id... JUSTID
in_slices(mine, function(slice)
  slice[#slice + 1] = 'JUSTID'
  redis.call('XCLAIM', stream, group, consumer, 0, unpack(slice))
end)
return lost
"""
)

# KEYS: stream    ARGV: max_age_ms, clock shift (ms)
# Trims history that every group has acknowledged and that is older than max_age_ms.
# An entry some group has not read or not acked is never removed. Returns entries trimmed.
TRIM: Final = (
    _PRELUDE
    + r"""
local groups = groups_of(KEYS[1])
if #groups == 0 then return 0 end
local safe = nil
for _, g in ipairs(groups) do
  local candidate
  local summary = redis.call('XPENDING', KEYS[1], g['name'])
  if tonumber(summary[1]) > 0 then
    candidate = summary[2]
  else
    local ms, seq = id_parts(g['last-delivered-id'])
    candidate = ms .. '-' .. (seq + 1)
  end
  if safe == nil or id_less(candidate, safe) then safe = candidate end
end
local cutoff = (now_ms(ARGV[2]) - tonumber(ARGV[1])) .. '-0'
if id_less(cutoff, safe) then safe = cutoff end
return redis.call('XTRIM', KEYS[1], 'MINID', safe)
"""
)

# KEYS: stream, expiry, delayed, delayed_data    ARGV: include_delayed ('1' | '0')
# Empties a stream but keeps its consumer groups (their pending lists are cleared).
# Returns the number of entries removed.
PURGE: Final = (
    _PRELUDE
    + r"""
local n = redis.call('XLEN', KEYS[1])
local groups = groups_of(KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[1] == '1' then redis.call('DEL', KEYS[3], KEYS[4]) end
for _, g in ipairs(groups) do
  redis.call('XGROUP', 'CREATE', KEYS[1], g['name'], '0', 'MKSTREAM')
end
return n
"""
)

# KEYS: streams...    ARGV: group per stream
# Creates each consumer group (and its stream) if missing, reading from the start so no
# message sent before the group existed is skipped. Returns the number created. A key
# that is not a stream is an error (checked before any group is created).
CREATE_GROUPS: Final = r"""
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= 'stream' then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. t .. ', not a stream')
  end
end
local created = 0
for i = 1, #KEYS do
  local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[i], ARGV[i], '0', 'MKSTREAM')
  if ok then
    created = created + 1
  else
    local msg = type(err) == 'table' and err.err or tostring(err)
    if not string.find(msg, 'BUSYGROUP', 1, true) then return redis.error_reply(msg) end
  end
end
return created
"""

# KEYS: stream    ARGV: group, consumer
# Deletes a consumer only when it has no pending entries (DELCONSUMER would drop them).
DELETE_IDLE_CONSUMER: Final = r"""
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
