-- extend_leases.lua: renew the leases (idle times) of entries a consumer still owns.
--
-- KEYS    [1] stream        the queue's stream
-- ARGV    [1] group         the consumer group
--         [2] consumer      the consumer holding the leases
--         [3..] ids         stream ids (a caller sends at most 1,000 per call)
-- REPLY   array of ids: those ``consumer`` no longer owns (their lease was lost to
--         another consumer, or they were settled): the caller stops working on them.
-- ATOMIC  Ownership is checked and the idle time reset (XCLAIM ... JUSTID: no delivery
--         count change) in one step, so no other consumer can claim in between.
-- ERRORS  NOGROUP when the stream or group is missing.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local mine, lost = {}, {}
for k = 3, #ARGV do
  if pending_owner(stream, group, ARGV[k]) == consumer then
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
