-- cancel.lua: cancel one message by id: remove it if no group started it, else mark it.
--
-- KEYS    [1] stream        the queue's stream
--         [2] dlq           the dead-letter queue's stream
--         [3] delayed       zset: delayed member -> due time (Redis clock, ms)
--         [4] delayed_data  hash: delayed member -> cmsgpack-packed field list
--         [5] expiry        zset: stream id -> expiry time (ms)
--         [6] dedup         hash: message_id -> "<until ms> <id first returned>"
--         [7] cancelled     zset: stream id -> end of its cancel marker (Redis clock, ms)
-- ARGV    [1] id            a stream id, a delayed member (what a delayed send returned),
--                           or the message_id of an idempotent send (looked up in dedup)
--         [2] queue         the queue's name (dlq.queue)
--         [3] marker_ms     how long a cancel marker is kept (ms)
--         [4] channel       the pub/sub channel announcing cancel requests
--         [5] announcement  the text published, followed by ' ' and the stream id
--         [6] clock shift   ms (0 in production)
-- REPLY   {status, id}: bulk strings; id is the stream id or delayed member resolved, status:
--           'cancelled'  no group had started it: a delayed member is removed and
--                        dead-lettered once (dlq.group = its target group, '' = every
--                        group); a stream entry is dead-lettered once per group that had
--                        not read it yet, then deleted (with its expiry record); and a
--                        retry of it a group scheduled ('group|id' in delayed) is removed
--                        and dead-lettered for that group (also with 'running');
--           'running'    pending in some group (a handler has it): marked in ``cancelled``
--                        (until now + marker_ms) and announced on ``channel``; the
--                        worker cancels the handler and dead-letters it, and a group that
--                        reads it later dead-letters it unrun (both with reason 'cancelled');
--           'finished'   in the stream, read and acknowledged by every group it was for;
--           'not_found'  neither delayed nor in the stream (nor a known message_id).
-- ATOMIC  The removal and its dead letters (reason 'cancelled', error 'Cancelled'), or the
--         marker and its announcement, happen together; markers past their end are
--         dropped here, and the key expires marker_ms after the last cancel.
-- ERRORS  'WRONGTYPE ...' before anything is written.
local stream, dlq, delayed, cancelled = KEYS[1], KEYS[2], KEYS[3], KEYS[7]
local bad = check_types(KEYS, {'stream', 'stream', 'zset', 'hash', 'zset', 'hash', 'zset'})
if bad then return redis.error_reply(bad) end
local id = ARGV[1]
local function is_stream_id(s) return string.match(s, '^%d+%-%d+$') ~= nil end
if not is_stream_id(id) and not redis.call('ZSCORE', delayed, id) then
  local record = redis.call('HGET', KEYS[6], id)
  if record then id = string.match(record, '^%S+ (.+)$') or id end
end
local at = time_text()
local function dead(fields, group)
  add_dead_letter(dlq, fields, {reason = 'cancelled', error = 'Cancelled', traceback = '',
    attempts = field(fields, 'a') or '0', at = at, queue = ARGV[2], id = id, group = group})
end
if not is_stream_id(id) then
  if not redis.call('ZSCORE', delayed, id) then return {'not_found', id} end
  local packed = redis.call('HGET', KEYS[4], id)
  redis.call('ZREM', delayed, id)
  redis.call('HDEL', KEYS[4], id)
  if not packed then return {'not_found', id} end
  local fields = cmsgpack.unpack(packed)
  dead(fields, field(fields, 'g') or '')
  return {'cancelled', id}
end
local fields = entry_fields(stream, id)
if not fields then return {'not_found', id} end
local target = field(fields, 'g')
if target == '' then target = nil end
local running, waiting, retried = false, {}, false
for _, g in ipairs(groups_of(stream)) do
  local name = g['name']
  if target == nil or target == name then
    if pending_owner(stream, name, id) then
      running = true
    elseif id_less(g['last-delivered-id'], id) then
      waiting[#waiting + 1] = name
    else
      local member = name .. '|' .. id
      local packed = redis.call('HGET', KEYS[4], member)
      if redis.call('ZREM', delayed, member) == 1 then
        redis.call('HDEL', KEYS[4], member)
        if packed then dead(cmsgpack.unpack(packed), name) end
        retried = true
      end
    end
  end
end
if running then
  local now = now_ms(ARGV[6])
  local ttl = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', cancelled, '-inf', now)
  redis.call('ZADD', cancelled, now + ttl, id)
  redis.call('PEXPIRE', cancelled, ttl)
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. id)
  return {'running', id}
end
if #waiting == 0 then return {retried and 'cancelled' or 'finished', id} end
for _, name in ipairs(waiting) do dead(fields, name) end
redis.call('XDEL', stream, id)
redis.call('ZREM', KEYS[5], id)
return {'cancelled', id}
