-- due_scan.lua: when is the first member of each of many time-scored zsets due.
--
-- KEYS    [1..n] zsets scored by a Redis-clock time in ms (delayed sets, expiry
--         indexes), of any number of queues: a worker serving many queues asks for all of
--         them in one call instead of one script call per queue (on Redis Cluster the
--         caller sends one call per hash slot).
-- ARGV    [1] clock shift   ms (0 in production)
-- REPLY   One integer per key, in order: ms until its first member is due (0: due
--         already), -1 when the key is empty or missing.
-- ATOMIC  Read-only: one consistent look at every key.
-- ERRORS  'WRONGTYPE ...' when a key is not a zset.
local bad = check_types(KEYS, {'zset'})
if bad then return redis.error_reply(bad) end
local now = now_ms(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    out[i] = math.max(0, tonumber(first[2]) - now)
  else
    out[i] = -1
  end
end
return out
