-- pending_scan.lua: which of many (stream, group) pairs hold an entry idle past a lease.
--
-- KEYS    [1..n] streams, of any number of queues (a worker serving many queues asks
--         for all of them in one call instead of a reclaim scan per queue; on Redis
--         Cluster the caller sends one call per hash slot)
-- ARGV    [2i-1] group of KEYS[i]; [2i] its lease in ms (min idle time). So ARGV[1] is
--         the group of KEYS[1] and ARGV[2] its lease.
-- REPLY   One integer per key, in order: 1 when the group holds a pending entry idle for
--         at least the lease (a reclaim scan would find it), else 0 (also when the
--         stream or the group is missing).
-- ATOMIC  Read-only: one consistent look at every pending list.
-- ERRORS  None: a missing stream or group counts as 0.
local out = {}
for i, key in ipairs(KEYS) do
  local ok, rows = pcall(redis.call, 'XPENDING', key, ARGV[2 * i - 1], 'IDLE',
    tonumber(ARGV[2 * i]), '-', '+', 1)
  if ok and type(rows) == 'table' and rows[1] then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
