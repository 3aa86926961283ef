-- cxrel shared rate budget: GCRA with reservations plus AIMD, all state in one hash (KEYS[1]).
-- Times are microseconds of the Redis server's clock (TIME): client clocks are never trusted.
-- Fields: rate (effective rps), tat (theoretical arrival time), cool_until, window_until,
-- last_change (start of the current increase interval), consecutive (throttle windows in a row).
--
-- ARGV[1] = op: "acquire" | "throttle" | "increase"
-- ARGV[2] = max_rate, ARGV[3] = burst, ARGV[4] = ttl_ms (the hash expires after this idle time)
-- throttle: ARGV[5] = retry_after_us (-1 = none), ARGV[6] = decrease_factor, ARGV[7] = min_rate,
--           ARGV[8] = cool_min_us, ARGV[9] = cool_max_us
-- increase: ARGV[5] = step (rps added per interval), ARGV[6] = interval_us, ARGV[7] = cool_max_us
--
-- Replies are integers (Lua numbers are truncated): {wait_us, rate_milli} for acquire,
-- {decreased 0|1, rate_milli, cool_left_us} for throttle, {rate_milli} for increase.
local key = KEYS[1]
local op = ARGV[1]
local max_rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local s = redis.call('HMGET', key, 'rate', 'tat', 'cool_until', 'window_until', 'last_change', 'consecutive')
local rate = tonumber(s[1]) or max_rate
if rate > max_rate or rate <= 0 then rate = max_rate end
local tat = tonumber(s[2]) or 0
local cool = tonumber(s[3]) or 0
local window = tonumber(s[4]) or 0
local last_change = tonumber(s[5]) or 0
local consecutive = tonumber(s[6]) or 0

local function milli(r) return math.floor(r * 1000 + 0.5) end

if op == 'acquire' then
  local interval = 1000000 / rate
  -- No cell before the cool-down ends: requests queued during it leave at its end with at most
  -- the burst, then at the rate.
  local start = math.max(now, cool)
  local new_tat = math.max(tat, start) + interval
  local allow_at = math.max(new_tat - burst * interval, start)
  redis.call('HSET', key, 'tat', string.format('%.0f', new_tat))
  redis.call('PEXPIRE', key, ttl)
  return {math.floor(allow_at - now), milli(rate)}
end

if op == 'throttle' then
  local retry_after = tonumber(ARGV[5])
  local factor = tonumber(ARGV[6])
  local min_rate = tonumber(ARGV[7])
  local cool_min = tonumber(ARGV[8])
  local cool_max = tonumber(ARGV[9])
  -- A clean spell as long as the longest cool-down ends a run of throttle windows.
  if consecutive > 0 and now >= window + cool_max then consecutive = 0 end
  local pause = math.min(cool_min * 2 ^ math.min(consecutive, 16), cool_max)
  if retry_after >= 0 then pause = math.min(retry_after, cool_max) end
  cool = math.max(cool, now + pause)
  if now < window then
    -- Same window: answers of requests already in flight, no second decrease.
    redis.call('HSET', key, 'cool_until', string.format('%.0f', cool))
    redis.call('PEXPIRE', key, ttl)
    return {0, milli(rate), math.floor(cool - now)}
  end
  consecutive = consecutive + 1
  window = math.max(cool, now + cool_min)
  rate = math.max(rate * factor, min_rate)
  -- The lowered rate starts with its burst used up, as a freshly swapped local limiter does.
  tat = math.max(tat, now + burst * 1000000 / rate)
  redis.call('HSET', key, 'rate', tostring(rate), 'tat', string.format('%.0f', tat),
    'cool_until', string.format('%.0f', cool), 'window_until', string.format('%.0f', window),
    'last_change', string.format('%.0f', cool), 'consecutive', consecutive)
  redis.call('PEXPIRE', key, ttl)
  return {1, milli(rate), math.floor(cool - now)}
end

if op == 'increase' then
  local step = tonumber(ARGV[5])
  local interval = tonumber(ARGV[6])
  local cool_max = tonumber(ARGV[7])
  if now < cool then return {milli(rate)} end
  if consecutive > 0 and now >= window + cool_max then
    redis.call('HSET', key, 'consecutive', 0)
  end
  if rate >= max_rate or now - last_change < interval then return {milli(rate)} end
  -- One step per interval for all replicas together: last_change is shared.
  rate = math.min(rate + step, max_rate)
  redis.call('HSET', key, 'rate', tostring(rate), 'last_change', string.format('%.0f', now))
  redis.call('PEXPIRE', key, ttl)
  return {milli(rate)}
end

return redis.error_reply('cxrel budget: unknown op')
