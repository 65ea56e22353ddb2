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

# KEYS: per queue [stream, expiry, delayed, delayed_data]
# ARGV: n_ops, then per op: queue index (1-based), ttl_ms, delay_ms, field, body, member;
#       last: clock shift (ms)
# Every key's type is checked before anything is written, so a batch (a transaction, or
# send_messages) is written whole or not at all. Returns the stream ids (or delayed members).
# A delayed member is prefixed with the send time and the op's index: entries due at the
# same millisecond sort by member, so this keeps them in the order they were sent.
SEND: Final = (
    _PRELUDE
    + r"""
local expected = {'stream', 'zset', 'zset', 'hash'}
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  local want = expected[((i - 1) % 4) + 1]
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local n = tonumber(ARGV[1])
local now = now_ms(ARGV[2 + n * 6])
local out = {}
for op = 0, n - 1 do
  local b = 2 + op * 6
  local base = (tonumber(ARGV[b]) - 1) * 4
  local ttl, delay = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local fields = {ARGV[b + 3], ARGV[b + 4]}
  if ttl > 0 then
    fields[3] = 'x'
    fields[4] = tostring(now + ttl)
  end
  if delay > 0 then
    local member = string.format('%015.0f%06d|', now, op) .. ARGV[b + 5]
    redis.call('ZADD', KEYS[base + 3], now + delay, member)
    redis.call('HSET', KEYS[base + 4], member, cmsgpack.pack(fields))
    out[#out + 1] = member
  else
    local id = redis.call('XADD', KEYS[base + 1], '*', unpack(fields))
    if ttl > 0 then redis.call('ZADD', KEYS[base + 2], now + ttl, id) end
    out[#out + 1] = id
  end
end
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
# ARGV: group, consumer ('' = no ownership check), source queue name, n,
#       then per id: id, reason, error_type, traceback, attempts
# Copies each entry to the DLQ with its failure metadata and acks it, together.
# An entry already gone from the stream but still pending in the group (delivered, then
# deleted) leaves a tombstone (dlq.missing = 1): the loss is recorded, never hidden. An id
# that is neither in the stream nor pending is skipped. Returns the number moved.
DEAD_LETTER: Final = (
    _PRELUDE
    + r"""
local stream, dlq, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local bad = check_types(KEYS, {'stream', 'stream'})
if bad then return redis.error_reply(bad) end
local t = redis.call('TIME')
local at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local moved = 0
for k = 0, tonumber(ARGV[4]) - 1 do
  local b = 5 + k * 5
  local id = ARGV[b]
  if consumer == '' or owned_by(stream, group, id, consumer) then
    local entry = redis.call('XRANGE', stream, id, id)
    local fields = nil
    if entry[1] ~= nil and entry[1][2] ~= nil then
      fields = {}
      for i, v in ipairs(entry[1][2]) do fields[i] = v end
    elseif consumer ~= '' or pending_in(stream, group, id) then
      fields = {'dlq.missing', '1'}
    end
    if fields then
      local meta = {'dlq.reason', ARGV[b + 1], 'dlq.error', ARGV[b + 2], 'dlq.traceback',
        ARGV[b + 3], 'dlq.attempts', ARGV[b + 4], 'dlq.at', at, 'dlq.queue', ARGV[3],
        'dlq.id', id, 'dlq.group', group}
      for _, v in ipairs(meta) do fields[#fields + 1] = v end
      redis.call('XADD', dlq, '*', unpack(fields))
      redis.call('XACK', stream, group, id)
      moved = moved + 1
    end
  end
end
return moved
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
# ARGV: limit, policy ('drop' | 'dlq'), source queue name, count ('removed' | 'unhandled'),
#       clock shift (ms)
# Removes expired entries: acked in every group and deleted. With policy 'dlq', an entry
# some group has not handled yet (not delivered to it, or pending in it) is dead-lettered
# first; one every group has acked (processed, or skipped by a reader as expired) is only
# deleted, never dead-lettered. Returns the number of entries removed from the stream, or
# with count 'unhandled' only those some group had not handled (the ones that expired
# unhandled: a message handled before its TTL ran out is not reported as expired).
EXPIRE: Final = (
    _PRELUDE
    + r"""
local to_dlq = ARGV[2] == 'dlq'
local bad = check_types(to_dlq and KEYS or {KEYS[1], KEYS[2]}, {'stream', 'zset', 'stream'})
if bad then return redis.error_reply(bad) end
local now = now_ms(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids == 0 then return 0 end
local groups = groups_of(KEYS[1])
local function unhandled(id)
  if #groups == 0 then return true end
  for _, g in ipairs(groups) do
    if id_less(g['last-delivered-id'], id) then return true end
    if redis.call('XPENDING', KEYS[1], g['name'], id, id, 1)[1] ~= nil then return true end
  end
  return false
end
-- Every copy to the DLQ is written before anything is removed: if a write fails,
-- the script stops with the stream untouched.
if to_dlq then
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  for _, id in ipairs(ids) do
    if unhandled(id) then
      local entry = redis.call('XRANGE', KEYS[1], id, id)
      if entry[1] ~= nil and entry[1][2] ~= nil then
        local fields = {}
        for i, v in ipairs(entry[1][2]) do fields[i] = v end
        local meta = {'dlq.reason', 'expired', 'dlq.error', 'Expired', 'dlq.traceback', '',
          'dlq.attempts', '0', 'dlq.at', at, 'dlq.queue', ARGV[3], 'dlq.id', id,
          'dlq.group', ''}
        for _, v in ipairs(meta) do fields[#fields + 1] = v end
        redis.call('XADD', KEYS[3], '*', unpack(fields))
      end
    end
  end
end
local only_unhandled = ARGV[4] == 'unhandled'
local n = 0
for _, id in ipairs(ids) do
  local counts = not only_unhandled or unhandled(id)
  for _, g in ipairs(groups) do redis.call('XACK', KEYS[1], g['name'], id) end
  local removed = redis.call('XDEL', KEYS[1], id)
  if counts then n = n + removed end
  redis.call('ZREM', KEYS[2], id)
end
return n
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
