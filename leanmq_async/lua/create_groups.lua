-- create_groups.lua: create consumer groups (and their streams) that do not exist yet.
--
-- KEYS    [1..n] streams    streams of one hash slot
-- ARGV    [1..n] groups     the group to create on each stream (ARGV[i] on KEYS[i])
-- REPLY   integer: the number of groups created (existing ones are left as they are).
-- ATOMIC  Every key's type is checked before any group is created. A group is created
--         at id 0 (MKSTREAM), so no message sent before the group existed is skipped.
-- ERRORS  'WRONGTYPE key K holds a T, not a stream' (nothing created); any XGROUP error
--         other than BUSYGROUP (the groups created before it stay).
local bad = check_types(KEYS, {'stream'})
if bad then return redis.error_reply(bad) end
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
