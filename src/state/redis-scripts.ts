/**
 * The Lua scripts behind the shared state. Redis runs a script alone, so each check-and-count is atomic across
 * every instance: no lost update, no budget overspent by two instances deciding at once. The client runs them
 * with EVALSHA (EVAL once after a Redis restart emptied its script cache). `now` always comes from the
 * caller (tests use an injected clock), never from the Redis server's clock.
 *
 * Sends and rate events are members of a sorted set scored by their time: "at:amount:unique".
 */
import type { CommandParser } from 'redis';

/**
 * Send limits, exactly as SendLimiter (src/delivery/limits.ts) decides them: for each rule, what was sent in
 * the window (fixed: in the window now is in; sliding: after now - length; sends stamped after now count too,
 * since instances' clocks and their takes' arrival never line up exactly) plus what this message needs must fit, unless nothing was sent in it (a message bigger than the
 * whole budget goes alone in an empty window). Over: the retry time is the window's end (fixed) or when enough
 * of the oldest sends have left it (sliding); the latest over all rules wins. Fits: counted, and the key
 * expires a week after its last send.
 *
 * KEYS[1] the key's sends. ARGV: now, recipients, mode (fixed | sliding), member, ttl ms, horizon (sends at or
 * before it can count for no rule), then per rule: unit (messages | recipients), window length ms, window
 * offset ms (weeks start on Monday), max. Answers {1, 0, 0} counted, or {0, retryAt, rule number from 1}.
 */
const TAKE_LIMIT = `
local key = KEYS[1]
local now = tonumber(ARGV[1])
local need_recipients = tonumber(ARGV[2])
local sliding = ARGV[3] == 'sliding'
redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[6])
local rules = {}
local earliest = now
for i = 7, #ARGV, 4 do
  local length = tonumber(ARGV[i + 1])
  local offset = tonumber(ARGV[i + 2])
  local start = math.floor((now - offset) / length) * length + offset
  local from, to = start, start + length
  if sliding then from, to = now - length + 1, math.huge end
  rules[#rules + 1] = { messages = ARGV[i] == 'messages', length = length, start = start, from = from, to = to, max = tonumber(ARGV[i + 3]) }
  if from < earliest then earliest = from end
end
local at, recipients = {}, {}
for i, member in ipairs(redis.call('ZRANGEBYSCORE', key, earliest, '+inf')) do
  local a, r = string.match(member, '^(%-?%d+):(%d+):')
  at[i] = tonumber(a)
  recipients[i] = tonumber(r)
end
local worst, worst_rule = nil, 0
for j, rule in ipairs(rules) do
  local need = need_recipients
  if rule.messages then need = 1 end
  local used, counted = 0, {}
  for i = 1, #at do
    if at[i] >= rule.from and at[i] < rule.to then
      counted[#counted + 1] = i
      if rule.messages then used = used + 1 else used = used + recipients[i] end
    end
  end
  if used ~= 0 and used + need > rule.max then
    local retry = now
    if not sliding then
      retry = rule.start + rule.length
    else
      for _, i in ipairs(counted) do
        if rule.messages then used = used - 1 else used = used - recipients[i] end
        if used == 0 or used + need <= rule.max then
          retry = at[i] + rule.length
          break
        end
      end
    end
    if retry > now and (worst == nil or retry > worst) then
      worst = retry
      worst_rule = j
    end
  end
end
if worst then return { 0, worst, worst_rule } end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, ARGV[5])
return { 1, 0, 0 }
`;

/**
 * A sliding-window counter, exactly as MemoryWindowCounter (src/state/window-counter.ts): events older than the
 * window leave; if some are left and they plus `amount` pass `max`, nothing is counted and the answer is when
 * enough of the oldest will have left; otherwise `amount` is counted now.
 *
 * KEYS[1] the key's events. ARGV: now, amount, max, window ms, member. Answers {1, 0} or {0, retryAt}.
 */
const TAKE_WINDOW = `
local key = KEYS[1]
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local events = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #events, 2 do
  used = used + tonumber(string.match(events[i], '^%-?%d+:(%d+):'))
end
if used > 0 and used + amount > max then
  for i = 1, #events, 2 do
    used = used - tonumber(string.match(events[i], '^%-?%d+:(%d+):'))
    if used == 0 or used + amount <= max then return { 0, tonumber(events[i + 1]) + window } end
  end
end
redis.call('ZADD', key, now, ARGV[5])
redis.call('PEXPIRE', key, window)
return { 1, 0 }
`;

/** Deletes a lock only while it still holds this instance's value (it may have expired and passed on). */
const RELEASE_LOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

function keyAndArgs(parser: CommandParser, key: string, args: readonly string[]): void {
  parser.pushKey(key);
  parser.push(...args);
}

/** The scripts as node-redis script definitions (defineScript adds their SHA1 when the client is created). */
export const SCRIPTS = {
  takeLimit: { NUMBER_OF_KEYS: 1, SCRIPT: TAKE_LIMIT, parseCommand: keyAndArgs, transformReply: (reply: unknown) => reply as [number, number, number] },
  takeWindow: { NUMBER_OF_KEYS: 1, SCRIPT: TAKE_WINDOW, parseCommand: keyAndArgs, transformReply: (reply: unknown) => reply as [number, number] },
  releaseLock: { NUMBER_OF_KEYS: 1, SCRIPT: RELEASE_LOCK, parseCommand: keyAndArgs, transformReply: (reply: unknown) => reply as number },
};
