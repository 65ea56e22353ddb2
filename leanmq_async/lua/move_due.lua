-- move_due.lua: move the delayed entries (delays and retries) that are due into the stream.
--
-- KEYS    [1] stream        the queue's stream
--         [2] delayed       zset: delayed member -> due time (Redis clock, ms)
--         [3] delayed_data  hash: delayed member -> cmsgpack-packed field list
--         [4] expiry        zset: stream id -> expiry time (ms)
--         [5] main          optional, for a priority level's stream: the queue's main
--                           stream, whose groups a level stream created here gets
-- ARGV    [1] limit         most delayed entries moved by this call
--         [2] clock shift   ms (0 in production)
-- REPLY   {moved, wait}: integers. moved: entries added to the stream; wait: ms until
--         the next delayed entry is due (0: one is due already, more than ``limit``
--         were), -1 when none is waiting.
-- ATOMIC  Each due entry is added to the stream (and to the expiry index when it has an
--         ``x`` field) and removed from the delayed set and hash in the same call. A
--         member whose data is missing is only removed (not counted).
-- ERRORS  'WRONGTYPE ...' before anything is moved.
local bad, absent = check_types(KEYS, {'stream', 'zset', 'hash', 'zset', 'stream'})
if bad then return redis.error_reply(bad) end
local created = KEYS[5] ~= nil and absent[KEYS[1]]
local now = now_ms(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, member in ipairs(due) do
  local packed = redis.call('HGET', KEYS[3], member)
  if packed then
    local fields = cmsgpack.unpack(packed)
    local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
    if created then
      copy_groups(KEYS[5], KEYS[1])
      created = false
    end
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
