-- migrate_step.lua: move a batch of LeanMQ 0.2 entries into a leanmq_async queue.
--
-- KEYS    [1] old           the LeanMQ 0.2 stream (mq:orders or mq:orders:dlq)
--         [2] old_expiry    its zset: stream id -> expiry (unix seconds, 0.2's client clock)
--         [3] new           the leanmq_async stream (main or DLQ)
--         [4] new_expiry    its zset: stream id -> expiry (ms, Redis clock)
-- ARGV    [1] old_group     LeanMQ 0.2's consumer group ('' = none)
--         [2] mode          'main' | 'waiting' | 'dlq'
--         [3] n             the number of entries that follow
--         then per entry:   old_id, n_values, field, value, field, value ... (n_values =
--                           2 x fields: the entry already converted by the caller)
-- REPLY   {moved, acked, gone}: entries moved; entries left alone (acknowledged history,
--         or taken by a live LeanMQ 0.2 consumer meanwhile); entries no longer there.
-- ATOMIC  Each entry is re-checked here (the caller's read may be stale):
--           gone  - not in the old stream: its expiry member is removed, acked if pending;
--           acked - main stream, not pending and at or before the group's last-delivered
--                   id (acknowledged history, left alone); or, in mode 'waiting', pending
--                   (a live LeanMQ 0.2 consumer took it meanwhile: left to it);
--           moved - otherwise (every entry of a DLQ stream): XADD to the new stream (with
--                   the old id when it sorts last there, else a new one), ZADD of its 'x'
--                   field to the new expiry index, XDEL + ZREM of the old entry, XACK if
--                   it was pending.
--         So a step killed before it ran moves nothing, one that ran moved its entries
--         whole, and a re-run moves only what is left. Needs one Redis (not a cluster):
--         the old and new keys are in different slots.
-- ERRORS  'WRONGTYPE key K holds a T, not a W' (checked before the first write).
local old, old_exp, new, new_exp = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, mode, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local bad = check_types(KEYS, {'stream', 'zset', 'stream', 'zset'})
if bad then return redis.error_reply(bad) end
local has_group, last = false, nil
if group ~= '' then
  for _, g in ipairs(groups_of(old)) do
    if g['name'] == group then has_group, last = true, g['last-delivered-id'] end
  end
end
local moved, acked, gone = 0, 0, 0
local b = 4
for _ = 1, n do
  local id, nv = ARGV[b], tonumber(ARGV[b + 1])
  local fields = {}
  for i = 1, nv do fields[i] = ARGV[b + 1 + i] end
  b = b + 2 + nv
  local pending = false
  if has_group then
    local p = redis.call('XPENDING', old, group, id, id, 1)
    pending = p[1] ~= nil
  end
  local exists = redis.call('XRANGE', old, id, id)[1] ~= nil
  if not exists or nv == 0 then
    gone = gone + 1
    redis.call('ZREM', old_exp, id)
    if pending then redis.call('XACK', old, group, id) end
  elseif mode ~= 'dlq' and not pending and last ~= nil and not id_less(last, id) then
    acked = acked + 1
  elseif mode == 'waiting' and pending then
    acked = acked + 1
  else
    local new_id = redis.pcall('XADD', new, id, unpack(fields))
    if type(new_id) == 'table' and new_id.err then
      new_id = redis.call('XADD', new, '*', unpack(fields))
    end
    for i = 1, #fields, 2 do
      local x = fields[i] == 'x' and tonumber(fields[i + 1])
      if x then redis.call('ZADD', new_exp, x, new_id) end
    end
    redis.call('XDEL', old, id)
    redis.call('ZREM', old_exp, id)
    if pending then redis.call('XACK', old, group, id) end
    moved = moved + 1
  end
end
return {moved, acked, gone}
