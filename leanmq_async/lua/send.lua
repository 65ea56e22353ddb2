-- send.lua: write a batch of messages to one or more queues, all or nothing.
--
-- KEYS    4 per queue, queue q (1-based) at 4q-3 .. 4q:
--           stream        the queue's stream
--           expiry        zset: stream id -> expiry time (Redis clock, ms)
--           delayed       zset: delayed member -> due time (Redis clock, ms)
--           delayed_data  hash: delayed member -> cmsgpack-packed field list
-- ARGV    [1]       n: the number of messages
--         per message k = 0 .. n-1, at b = 2 + 6k:
--           [b]     queue index q (1-based, into KEYS as above)
--           [b+1]   ttl (ms; 0 = no expiry): adds the field x = now + ttl
--           [b+2]   delay (ms; 0 = now): > 0 writes a delayed member, not a stream entry
--           [b+3]   the envelope's field name
--           [b+4]   the envelope's body (bytes)
--           [b+5]   member suffix (delayed messages: names the delayed member)
--         [2+6n]    clock shift (ms; 0 in production)
-- REPLY   array of n bulk strings, in ARGV's order: the stream id of each message, or
--         for a delayed one its delayed member: the send time (15 digits, ms), the
--         message's index k (6 digits), '|', the suffix. Messages due at the same ms
--         sort by member, so they keep the order they were sent in.
-- ATOMIC  All or nothing: every key's type is checked before anything is written, and a
--         write that fails all the same (an XADD on a stream whose last id is the
--         largest possible one) undoes every write before it and deletes the streams
--         this call created, so a batch (a transaction, send_messages) is written whole
--         or not at all.
-- ERRORS  'WRONGTYPE key K holds a T, not a W' (nothing written);
--         '<redis error> (CMD KEY; nothing of this batch was written)'.
local bad, absent = check_types(KEYS, {'stream', 'zset', 'zset', 'hash'})
if bad then return redis.error_reply(bad) end
local new_streams = {}
for i = 1, #KEYS, 4 do
  if absent[KEYS[i]] then new_streams[#new_streams + 1] = KEYS[i] end
end
local n = tonumber(ARGV[1])
local now = now_ms(ARGV[2 + n * 6])
local out = {}
-- What was written so far, to remove again if a later write fails: {command, key, member}.
local undo = {}
local function write(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    for i = #undo, 1, -1 do redis.call(undo[i][1], undo[i][2], undo[i][3]) end
    -- XDEL leaves an empty stream behind: remove the streams this script created.
    for _, created in ipairs(new_streams) do redis.call('DEL', created) end
    return nil, r.err .. ' (' .. cmd .. ' ' .. key .. '; nothing of this batch was written)'
  end
  return r, nil
end
for op = 0, n - 1 do
  local b = 2 + op * 6
  local base = (tonumber(ARGV[b]) - 1) * 4
  local ttl, delay = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local fields = {ARGV[b + 3], ARGV[b + 4]}
  if ttl > 0 then
    fields[3] = 'x'
    fields[4] = tostring(now + ttl)
  end
  local _, err
  if delay > 0 then
    local member = string.format('%015.0f%06d|', now, op) .. ARGV[b + 5]
    _, err = write('ZADD', KEYS[base + 3], now + delay, member)
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'ZREM', KEYS[base + 3], member}
    _, err = write('HSET', KEYS[base + 4], member, cmsgpack.pack(fields))
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'HDEL', KEYS[base + 4], member}
    out[#out + 1] = member
  else
    local id
    id, err = write('XADD', KEYS[base + 1], '*', unpack(fields))
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'XDEL', KEYS[base + 1], id}
    if ttl > 0 then
      _, err = write('ZADD', KEYS[base + 2], now + ttl, id)
      if err then return redis.error_reply(err) end
      undo[#undo + 1] = {'ZREM', KEYS[base + 2], id}
    end
    out[#out + 1] = id
  end
end
return out
