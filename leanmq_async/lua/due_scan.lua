-- due_scan.lua: when is the first member of each of many time-scored zsets due.
--
-- KEYS    [1..n] zsets scored by a Redis-clock time in ms (delayed sets, expiry
--         indexes), of any number of queues: a worker serving many queues asks for all of
--         them in one call instead of one script call per queue (on Redis Cluster the
--         caller sends one call per hash slot).
-- ARGV    [1] clock shift   ms (0 in production)
-- REPLY   {next, i1, i2, ...}: next = ms until the soonest first member not yet due
--         (-1: none), then the 1-based positions of the keys whose first member is due
--         already (sparse: a thousand idle keys cost one integer, not a thousand).
-- ATOMIC  Read-only: one consistent look at every key.
-- ERRORS  'WRONGTYPE ...' when a key is not a zset.
local bad = check_types(KEYS, {'zset'})
if bad then return redis.error_reply(bad) end
local now = now_ms(ARGV[1])
local out = {-1}
for i, key in ipairs(KEYS) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = tonumber(first[2]) - now
    if wait <= 0 then
      out[#out + 1] = i
    elseif out[1] < 0 or wait < out[1] then
      out[1] = wait
    end
  end
end
return out
