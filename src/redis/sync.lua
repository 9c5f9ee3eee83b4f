-- Reads a channel's state for an instance that joins it or comes back after
-- losing its subscription, creating the state if it is missing.
--
-- KEYS[1]  the state hash: epoch, version, value
-- KEYS[2]  the history list: "<version> <value>" entries, oldest first
-- ARGV[1]  a fresh epoch, used if the sequence must start again
-- ARGV[2]  the initial value, used if the state is missing
-- ARGV[3]  the epoch the caller holds ('' if none)
-- ARGV[4]  the version the caller holds ('0' if none)
-- ARGV[5]  the Pub/Sub channel
--
-- Returns {epoch, version, value, history}; `history` is the list's entries
-- if the caller holds the current epoch, and empty otherwise.
local state_key, history_key, channel = KEYS[1], KEYS[2], ARGV[5]

local state = redis.call('HMGET', state_key, 'epoch', 'version', 'value')
local epoch, version, value = state[1], state[2], state[3] or ''
if not epoch then
  -- Never created, or lost (a restart without persistence, an eviction):
  -- start a new epoch, so that no client waits on the lost sequence.
  epoch, version, value = ARGV[1], '0', ARGV[2]
  redis.call('HSET', state_key, 'epoch', epoch, 'version', version, 'value', value)
  redis.call('DEL', history_key)
  redis.call('PUBLISH', channel, epoch .. ' ' .. version .. ' ' .. value)
elseif epoch == ARGV[3] and tonumber(version) < tonumber(ARGV[4]) then
  -- Behind what an instance already saw: restored from an older snapshot.
  -- Versions must never go back within an epoch, and the versions between
  -- would come again with other values, so the sequence moves to a new one.
  epoch = ARGV[1]
  redis.call('HSET', state_key, 'epoch', epoch)
  redis.call('DEL', history_key)
  redis.call('PUBLISH', channel, epoch .. ' ' .. version .. ' ' .. value)
end

local history = {}
if epoch == ARGV[3] then
  history = redis.call('LRANGE', history_key, 0, -1)
end
return {epoch, version, value, history}
