-- One publish, as one atomic step: read the channel's value, let `modify`
-- (defined above this text) compute the next one and, if it did, bump the
-- version, store the value, keep the one it replaces as history, refresh
-- the time to live and publish it.
--
-- KEYS[1]    the channel's hash: epoch, version, value, keep, h<version>...
-- KEYS[2]    the publish's idempotency key (KEYS[1] again if it has none)
-- KEYS[3..]  the caller's keys, handed to `modify` as its KEYS
-- ARGV[1]    a fresh epoch, used if the sequence must start again
-- ARGV[2]    the initial value, used if the state is missing
-- ARGV[3]    how many updates the caller's history keeps
-- ARGV[4]    the Pub/Sub channel
-- ARGV[5]    the epoch the caller holds
-- ARGV[6]    the version the caller holds
-- ARGV[7]    epochs the caller left, space-separated ('' if none)
-- ARGV[8]    how long to remember the idempotency key, in ms ('0': none)
-- ARGV[9]    the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[10]   the channel's time to live, in ms, set again by every publish
--            ('0': none)
-- ARGV[11..] the caller's arguments, handed to `modify` as its ARGV
--
-- Returns {epoch, version, value, changed, note}: `changed` is 1 if a new
-- version was published, 2 if the idempotency key was seen (nothing done;
-- epoch and version are then those of the first publish, value is ''),
-- 0 otherwise; `value` is the value now stored ('' after a change unless
-- `echo`); `note` is modify's second result ('' if none). An error raised by
-- `modify` comes back prefixed with LONGPOLL_SNIPPET.
local key, once_key = KEYS[1], KEYS[2]
local channel, once_ms, publish = ARGV[4], tonumber(ARGV[8]), ARGV[9]
local ttl = tonumber(ARGV[10])
local retired = ' ' .. ARGV[7] .. ' '

if once_ms > 0 then
  local seen = redis.call('GET', once_key)
  if seen then
    local e, v = string.match(seen, '^(%x+) (%d+)$')
    if e then return {e, v, '', 2, ''} end
  end
end

local state = redis.call('HMGET', key, 'epoch', 'version', 'value', 'keep')
local epoch, version, value = state[1], state[2], state[3] or ''
local restarted = false
if not epoch then
  epoch, version, value = ARGV[1], '0', ARGV[2]
  create(key, epoch, value)
  restarted = true
else
  local n, corrupt = checked_version(version)
  if not n then return corrupt end
  if behind(epoch, n, ARGV[5], tonumber(ARGV[6]), retired) then
    -- A new epoch before this publish, so that no version carries two
    -- values.
    epoch = ARGV[1]
    redis.call('HSET', key, 'epoch', epoch)
    drop_history(key)
    restarted = true
  end
end

local keys, argv = {}, {}
for i = 3, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 11, #ARGV do argv[#argv + 1] = ARGV[i] end
local ok, new, note = pcall(modify, value, keys, argv)
if not ok then
  local message = new
  if type(message) == 'table' then message = message.err end
  return redis.error_reply('LONGPOLL_SNIPPET ' .. tostring(message))
end
if note == nil or note == false then note = '' else note = tostring(note) end
if new == nil or new == false then
  if restarted then
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    -- Tell the other instances about the new epoch.
    redis.call(publish, channel, epoch .. ' ' .. version .. ' ' .. value)
  end
  return {epoch, version, value, 0, note}
end

new = tostring(new)
local previous = tonumber(version)
version = string.format('%d', redis.call('HINCRBY', key, 'version', 1))
redis.call('HSET', key, 'value', new)
-- The history depth is the channel's: the largest any instance asked for.
-- The value replaced becomes history; the one that falls out is deleted.
local keep = math.max(tonumber(state[4]) or 1, tonumber(ARGV[3]))
if keep > (tonumber(state[4]) or 1) then redis.call('HSET', key, 'keep', keep) end
if keep > 1 then
  redis.call('HSET', key, string.format('h%d', previous), value)
  if previous + 1 - keep >= 0 then
    redis.call('HDEL', key, string.format('h%d', previous + 1 - keep))
  end
end
if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
if once_ms > 0 then
  redis.call('SET', once_key, epoch .. ' ' .. version, 'PX', once_ms)
end
redis.call(publish, channel, epoch .. ' ' .. version .. ' ' .. new)
if not echo then new = '' end
return {epoch, version, new, 1, note}
