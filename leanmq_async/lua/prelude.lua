-- prelude.lua: helpers shared by every script.
--
-- The loader (leanmq_async/scripts.py) puts this file in front of each script, so every
-- script can call these functions; the prelude itself reads no KEYS or ARGV and writes
-- nothing. Conventions all scripts follow:
--   * Each script touches the keys of one queue only (one hash tag), so it runs on
--     Redis Cluster too.
--   * Times come from the Redis clock (TIME), never from a client's.
--   * Stream entries are copied field by field, so a garbled entry moves intact.
--   * Delayed entries are stored as cmsgpack-packed field lists.
--   * A script that fails half-way keeps what it wrote: every key's type is checked
--     (check_types) before the first write.

-- The Redis clock in ms. ``shift`` (an ARGV the script names; always 0 in production)
-- moves it forward, so a test can let time pass without waiting (Store.clock_shift_ms).
local function now_ms(shift)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + (tonumber(shift) or 0)
end

-- The Redis clock as 'seconds.microseconds' (a DLQ entry's dlq.at field).
local function time_text()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- The value of field ``name`` in a flat {name, value, ...} list (nil: no such field).
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- The fields of entry ``id`` of ``stream`` (a flat list), or nil when it is not there.
local function entry_fields(stream, id)
  local entry = redis.call('XRANGE', stream, id, id)
  if entry[1] ~= nil and entry[1][2] ~= nil then return entry[1][2] end
  return nil
end

-- The consumer of ``group`` that holds entry ``id`` pending, or nil when none does.
-- A missing stream or group is an error (NOGROUP), unless ``missing_ok``: then nil.
local function pending_owner(stream, group, id, missing_ok)
  local call = redis.call
  if missing_ok then call = redis.pcall end
  local p = call('XPENDING', stream, group, id, id, 1)
  if p.err ~= nil or p[1] == nil then return nil end
  return p[1][2]
end

-- {ms, seq} of a stream id 'ms-seq', as numbers.
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- Is stream id ``a`` older than ``b``?
local function id_less(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end

-- Checks that each key holds its type or does not exist, before the first write: a
-- script that fails half-way keeps what it wrote, so a wrong-typed key must stop it
-- while nothing has changed yet. ``types`` repeats over ``keys`` (4 types for 8 keys:
-- two queues). Returns an error text for redis.error_reply (nil: all good) and the set
-- of keys that do not exist ({key = true}).
local function check_types(keys, types)
  local absent = {}
  for i, key in ipairs(keys) do
    local t = redis.call('TYPE', key)['ok']
    local want = types[((i - 1) % #types) + 1]
    if t == 'none' then
      absent[key] = true
    elseif t ~= want then
      return 'WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a ' .. want, absent
    end
  end
  return nil, absent
end

-- Lua's unpack fails at ~8,000 values: commands that take a caller-sized list of ids
-- get them in slices of at most 1,000, one ``call(slice)`` each.
local function in_slices(ids, call)
  for i = 1, #ids, 1000 do
    call({unpack(ids, i, math.min(i + 999, #ids))})
  end
end

-- The consumer groups of ``stream`` (XINFO GROUPS as tables: g['name'],
-- g['last-delivered-id'], ...); none when the stream does not exist.
local function groups_of(stream)
  if redis.call('EXISTS', stream) == 0 then return {} end
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    out[#out + 1] = info
  end
  return out
end

-- A copy of a stream entry's field list without the fields named in ``drop`` (a set),
-- then the name/value pairs of ``extra`` appended (retry.lua, defer.lua).
local function copy_without(old, drop, extra)
  local fields = {}
  for i = 1, #old, 2 do
    if not drop[old[i]] then
      fields[#fields + 1] = old[i]
      fields[#fields + 1] = old[i + 1]
    end
  end
  for i = 1, #extra do fields[#fields + 1] = extra[i] end
  return fields
end

-- The name of entry ``id`` of ``stream`` outside its stream: ``id``, or for a priority
-- level's stream (its key ends in '}:p<level>', see leanmq_async/priority.py) ``id:p<level>``.
local function entry_name(stream, id)
  local level = string.match(stream, '}:p(%d)$')
  if level then return id .. ':p' .. level end
  return id
end

-- Does ``cancelled`` (a queue's cancel markers, see cancel.lua) hold a live marker for
-- entry ``id`` of ``stream``? (retry.lua and defer.lua refuse such an entry.)
local function cancel_marked(cancelled, stream, id, shift)
  local marker = redis.call('ZSCORE', cancelled, entry_name(stream, id))
  return marker ~= false and marker ~= nil and tonumber(marker) > now_ms(shift)
end

-- XADDs a dead letter to ``dlq``: a copy of ``fields`` (the entry's flat field list; nil
-- when the entry is gone from its stream: a tombstone, dlq.missing = 1, so the loss is
-- recorded, never hidden) followed by the failure metadata, in this order:
-- dlq.reason, dlq.error, dlq.traceback, dlq.attempts, dlq.at, dlq.queue, dlq.id, dlq.group
-- (dlq.id: the entry's name, entry_name: a priority level's entry names its level).
-- ``m`` holds them: {reason, error, traceback, attempts, at, queue, id, group}.
local function add_dead_letter(dlq, fields, m)
  local out = {'dlq.missing', '1'}
  if fields then
    out = {}
    for i, v in ipairs(fields) do out[i] = v end
  end
  local meta = {'dlq.reason', m.reason, 'dlq.error', m.error, 'dlq.traceback', m.traceback,
    'dlq.attempts', m.attempts, 'dlq.at', m.at, 'dlq.queue', m.queue, 'dlq.id', m.id,
    'dlq.group', m.group}
  for _, v in ipairs(meta) do out[#out + 1] = v end
  return redis.call('XADD', dlq, '*', unpack(out))
end

-- The metadata of an entry that expired unhandled for ``group`` (add_dead_letter's ``m``).
local function expired_meta(at, queue, id, group)
  return {reason = 'expired', error = 'Expired', traceback = '', attempts = '0', at = at,
    queue = queue, id = id, group = group}
end

-- Gives a priority level's stream ``stream``, just created, the consumer groups of the
-- queue's main stream ``main``, at id 0: a message of the level is aimed at every group
-- of the queue, as one of the main stream is (see leanmq_async/priority.py).
local function copy_groups(main, stream)
  -- A stream just created has no group yet: XGROUP CREATE cannot meet BUSYGROUP.
  for _, g in ipairs(groups_of(main)) do
    redis.call('XGROUP', 'CREATE', stream, g['name'], '0')
  end
end
