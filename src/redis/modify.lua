-- One publish, as one atomic step: read the channel's value, let `modify`
-- (defined above this text) compute the next one and, if it did, bump the
-- version, store the value, append it to the history and PUBLISH it.
--
-- KEYS[1]    the state hash: epoch, version, value
-- KEYS[2]    the history list: "<version> <value>" entries, oldest first
-- KEYS[3..]  the caller's keys, handed to `modify` as its KEYS
-- ARGV[1]    a fresh epoch, used if the state is missing
-- ARGV[2]    the initial value, used if the state is missing
-- ARGV[3]    how many updates the history keeps (1: no list)
-- ARGV[4]    the Pub/Sub channel
-- ARGV[5..]  the caller's arguments, handed to `modify` as its ARGV
--
-- Returns {epoch, version, value, changed, note}: `changed` is 1 if a new
-- version was published; `value` is the value now stored ('' after a
-- change unless `echo`); `note` is modify's second result ('' if none).
local state_key, history_key = KEYS[1], KEYS[2]
local keep, channel = tonumber(ARGV[3]), ARGV[4]

local state = redis.call('HMGET', state_key, 'epoch', 'version', 'value')
local epoch, version, value = state[1], state[2], state[3] or ''
local created = not epoch
if created then
  -- Never created, or lost (a restart without persistence, an eviction):
  -- start a new epoch, so that no client waits on the lost sequence.
  epoch, version, value = ARGV[1], '0', ARGV[2]
  redis.call('HSET', state_key, 'epoch', epoch, 'version', version, 'value', value)
  redis.call('DEL', history_key)
end

local keys, argv = {}, {}
for i = 3, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 5, #ARGV do argv[#argv + 1] = ARGV[i] end
local new, note = modify(value, keys, argv)
if note == nil or note == false then note = '' else note = tostring(note) end
if new == nil or new == false then
  if created then
    -- Tell the other instances about the new epoch.
    redis.call('PUBLISH', channel, epoch .. ' ' .. version .. ' ' .. value)
  end
  return {epoch, version, value, 0, note}
end

new = tostring(new)
version = string.format('%d', redis.call('HINCRBY', state_key, 'version', 1))
redis.call('HSET', state_key, 'value', new)
if keep > 1 then
  redis.call('RPUSH', history_key, version .. ' ' .. new)
  redis.call('LTRIM', history_key, -keep, -1)
end
redis.call('PUBLISH', channel, epoch .. ' ' .. version .. ' ' .. new)
if not echo then new = '' end
return {epoch, version, new, 1, note}
