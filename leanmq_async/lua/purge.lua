-- purge.lua: empty a stream but keep its consumer groups.
--
-- KEYS    [1] stream        the stream to empty (a queue's or a DLQ's)
--         [2] expiry        that stream's expiry index
--         [3] delayed       the queue's delayed set
--         [4] delayed_data  the queue's delayed data
-- ARGV    [1] include_delayed  '1': delete [3] and [4] too; '0': keep them
-- REPLY   integer: the number of stream entries removed.
-- ATOMIC  The keys are deleted and every group recreated (reading from the start, with
--         an empty pending list) in one step: no reader sees the stream without its
--         groups.
-- ERRORS  WRONGTYPE when [1] is not a stream.
local n = redis.call('XLEN', KEYS[1])
local groups = groups_of(KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[1] == '1' then redis.call('DEL', KEYS[3], KEYS[4]) end
for _, g in ipairs(groups) do
  redis.call('XGROUP', 'CREATE', KEYS[1], g['name'], '0', 'MKSTREAM')
end
return n
