/**
 * Outbound send limits: messages and recipients per minute, hour, day and week, per upstream or per mailbox an
 * upstream sends as (Upstream.sendsAs: the mailbox that logs in, or the sender itself). Pure: the caller passes
 * `now`, so windows are tested without sleeping. Mail over a limit is not refused here; check() answers the
 * exact time the window lets it through, and the scheduler defers the recipients to then.
 *
 * fixed windows start at multiples of their length since the epoch (UTC midnight for days, Monday 00:00 UTC
 * for weeks) and reset whole; sliding windows count what was sent in the last window length.
 *
 * SendLimiter is one process's counters; SendLimits is where the scheduler takes from: this process
 * (LocalSendLimits, saved with lowdb by limit-store.ts) or Redis, shared by several instances
 * (src/state/redis-limits.ts, whose Lua script implements exactly the semantics below).
 */
export const LIMIT_WINDOWS = { minute: 60_000, hour: 3_600_000, day: 86_400_000, week: 604_800_000 } as const;
export type LimitWindow = keyof typeof LIMIT_WINDOWS;
export type LimitUnit = 'messages' | 'recipients';

export interface LimitsConfig {
  messagesPerMinute?: number | undefined;
  messagesPerHour?: number | undefined;
  messagesPerDay?: number | undefined;
  messagesPerWeek?: number | undefined;
  recipientsPerMinute?: number | undefined;
  recipientsPerHour?: number | undefined;
  recipientsPerDay?: number | undefined;
  recipientsPerWeek?: number | undefined;
  /** Count each mailbox the upstream sends as separately (Exchange Online counts per mailbox). */
  perMailbox: boolean;
  mode: 'fixed' | 'sliding';
}

/** One configured limit: so many messages or recipients per window. */
export interface LimitRule {
  unit: LimitUnit;
  window: LimitWindow;
  max: number;
}

export type LimitCheck = { ok: true } | { ok: false; retryAt: number; rule: LimitRule };

/** What one key has sent: for each rule, [time, messages, recipients] events (sliding) or one window's totals (fixed). */
interface Usage {
  events: [at: number, messages: number, recipients: number][];
}

export interface LimitUse {
  key: string;
  unit: LimitUnit;
  window: LimitWindow;
  max: number;
  used: number;
  /** When the use drops (fixed: the whole window resets; sliding: the oldest counted send leaves it). */
  resetsAt: number | undefined;
}

export interface LimiterSnapshot {
  version: 1;
  usage: Record<string, [number, number, number][]>;
}

export function limitRules(config: LimitsConfig): LimitRule[] {
  const rules: LimitRule[] = [];
  for (const unit of ['messages', 'recipients'] as const) {
    for (const window of Object.keys(LIMIT_WINDOWS) as LimitWindow[]) {
      const max = config[`${unit}Per${window[0]!.toUpperCase()}${window.slice(1)}` as keyof LimitsConfig];
      if (typeof max === 'number') rules.push({ unit, window, max });
    }
  }
  return rules;
}

/** Thursday 1970-01-01 is day 0; weeks start on Monday 00:00 UTC. */
const WEEK_OFFSET = 4 * 86_400_000;

/** How far a fixed window of this kind is shifted from multiples of its length since the epoch. */
export function windowOffset(window: LimitWindow): number {
  return window === 'week' ? WEEK_OFFSET : 0;
}

export function windowStart(window: LimitWindow, now: number): number {
  const length = LIMIT_WINDOWS[window];
  const offset = windowOffset(window);
  return Math.floor((now - offset) / length) * length + offset;
}

/** The longest window of these rules: sends older than that can no longer count for any of them. */
export function longestWindow(rules: readonly LimitRule[]): number {
  return Math.max(0, ...rules.map((r) => LIMIT_WINDOWS[r.window]));
}

/**
 * Send-limit counters as the scheduler uses them. take() checks and counts in one step, so concurrent
 * deliveries (in this process or, with Redis, in several) never overspend a budget together. It throws when
 * the counters cannot be reached (Redis down): the caller defers the mail rather than send it unchecked.
 */
export interface SendLimits {
  /**
   * The counter key for mail through `upstream` sent as `sendsAs` (Upstream.sendsAs of the sender: the mailbox
   * that logs in), or undefined when the upstream has no limits.
   */
  key(upstream: string, sendsAs: string): string | undefined;
  /** Counts one message to `recipients` recipients at `now` if it fits every limit; otherwise counts nothing. */
  take(key: string, recipients: number, now: number): Promise<LimitCheck>;
  /** Each limit of each key with any use, for `smarthost limits show`. */
  uses(now: number): Promise<LimitUse[]>;
  /** Forgets what was sent through an upstream (every mailbox of it) or, without a name, through all. */
  reset(upstream?: string): Promise<number>;
  close(): Promise<void>;
}

export class SendLimiter {
  readonly #limits: ReadonlyMap<string, LimitsConfig>;
  readonly #usage = new Map<string, Usage>();
  /** Bumped on every change, so a writer knows whether there is anything to save. */
  version = 0;

  /** limits: per upstream name. */
  constructor(limits: ReadonlyMap<string, LimitsConfig>) {
    this.#limits = limits;
  }

  /** `upstream`, or with perMailbox `upstream/mailbox`; undefined when the upstream has no limits. */
  key(upstream: string, sendsAs: string): string | undefined {
    const config = this.#limits.get(upstream);
    if (!config || limitRules(config).length === 0) return undefined;
    return config.perMailbox ? `${upstream}/${sendsAs.toLowerCase()}` : upstream;
  }

  /** Whether one message to `recipients` recipients may go now; if not, the earliest time it may. */
  check(key: string, recipients: number, now: number): LimitCheck {
    const config = this.configFor(key);
    if (!config) return { ok: true };
    const events = this.#events(key, now);
    let worst: LimitCheck = { ok: true };
    for (const rule of limitRules(config)) {
      const need = rule.unit === 'messages' ? 1 : recipients;
      // One message bigger than the whole budget can never fit: let it through alone in an empty window.
      const retryAt = this.#freeAt(config.mode, rule, events, need, now);
      if (retryAt !== undefined && retryAt > now && (worst.ok || retryAt > worst.retryAt)) worst = { ok: false, retryAt, rule };
    }
    return worst;
  }

  /** check() and, when it answers ok, record(), with nothing in between. */
  take(key: string, recipients: number, now: number): LimitCheck {
    const check = this.check(key, recipients, now);
    if (check.ok) this.record(key, recipients, now);
    return check;
  }

  /** Counts one message to `recipients` recipients sent (or handed to the upstream) at `now`. */
  record(key: string, recipients: number, now: number): void {
    if (!this.configFor(key)) return;
    const usage = this.#usage.get(key) ?? { events: [] };
    usage.events.push([now, 1, recipients]);
    this.#usage.set(key, usage);
    this.version++;
  }

  /** Forgets what was sent through an upstream (every mailbox of it) or, without a name, through all. */
  reset(upstream?: string): number {
    let cleared = 0;
    for (const key of [...this.#usage.keys()]) {
      if (upstream === undefined || key === upstream || key.startsWith(`${upstream}/`)) {
        this.#usage.delete(key);
        cleared++;
      }
    }
    this.version++;
    return cleared;
  }

  /** Each limit of each key with any use, for `smarthost limits show`. */
  uses(now: number): LimitUse[] {
    const out: LimitUse[] = [];
    for (const key of [...this.#usage.keys()].sort()) {
      const config = this.configFor(key);
      if (!config) continue;
      const events = this.#events(key, now);
      if (events.length === 0) continue;
      for (const rule of limitRules(config)) {
        const counted = this.#counted(config.mode, rule, events, now);
        const used = counted.reduce((sum, e) => sum + (rule.unit === 'messages' ? e[1] : e[2]), 0);
        const resetsAt = counted.length === 0 ? undefined : config.mode === 'fixed' ? windowStart(rule.window, now) + LIMIT_WINDOWS[rule.window] : counted[0]![0] + LIMIT_WINDOWS[rule.window];
        out.push({ key, ...rule, used, resetsAt });
      }
    }
    return out;
  }

  /** The counters to save; sends that can no longer count at `now` are left out, and so is a key with none left. */
  snapshot(now: number): LimiterSnapshot {
    const usage: LimiterSnapshot['usage'] = {};
    for (const key of [...this.#usage.keys()]) {
      const events = this.#events(key, now);
      if (events.length > 0) usage[key] = events.map((e) => [...e] as [number, number, number]);
    }
    return { version: 1, usage };
  }

  /** Takes over counters saved by snapshot(); keys of upstreams no longer limited are dropped. */
  restore(snapshot: LimiterSnapshot): void {
    this.#usage.clear();
    for (const [key, events] of Object.entries(snapshot.usage)) {
      if (this.configFor(key)) this.#usage.set(key, { events: events.map((e) => [e[0], e[1], e[2]]) });
    }
    this.version++;
  }

  /** The limits that apply to a key (those of the upstream it starts with). */
  configFor(key: string): LimitsConfig | undefined {
    const slash = key.indexOf('/');
    return this.#limits.get(slash === -1 ? key : key.slice(0, slash));
  }

  /**
   * The key's events, without those older than its longest window (they can no longer count; Redis drops them
   * at the same horizon). A key with none left is forgotten: a relay that sends as thousands of senders over
   * time keeps counters only for those that sent within a window.
   */
  #events(key: string, now: number): [number, number, number][] {
    const usage = this.#usage.get(key);
    const config = this.configFor(key);
    if (!usage || !config) return [];
    const horizon = now - longestWindow(limitRules(config));
    const firstKept = usage.events.findIndex((e) => e[0] > horizon);
    if (firstKept === -1) {
      this.#usage.delete(key);
      return [];
    }
    if (firstKept > 0) usage.events = usage.events.slice(firstKept);
    return usage.events;
  }

  /**
   * The sends that count in the rule's window at `now`. A send stamped later than `now` counts too (in a fixed
   * window, only if it falls in the same window): another instance whose clock runs a little ahead, or whose
   * take reached Redis first, has spent that budget all the same.
   */
  #counted(mode: LimitsConfig['mode'], rule: LimitRule, events: readonly [number, number, number][], now: number) {
    const length = LIMIT_WINDOWS[rule.window];
    if (mode === 'sliding') return events.filter((e) => e[0] > now - length);
    const start = windowStart(rule.window, now);
    return events.filter((e) => e[0] >= start && e[0] < start + length);
  }

  /** When `need` more fits under the rule: now if it fits, else the earliest later time; undefined = fits now. */
  #freeAt(mode: LimitsConfig['mode'], rule: LimitRule, events: readonly [number, number, number][], need: number, now: number): number | undefined {
    const counted = this.#counted(mode, rule, events, now);
    const amount = (e: readonly [number, number, number]) => (rule.unit === 'messages' ? e[1] : e[2]);
    let used = counted.reduce((sum, e) => sum + amount(e), 0);
    if (used === 0 || used + need <= rule.max) return undefined;
    if (mode === 'fixed') return windowStart(rule.window, now) + LIMIT_WINDOWS[rule.window];
    // Sliding: wait until enough of the oldest sends have left the window.
    for (const e of counted) {
      used -= amount(e);
      if (used === 0 || used + need <= rule.max) return e[0] + LIMIT_WINDOWS[rule.window];
    }
    return now;
  }
}

/** One process's limits, in memory (LimitStore adds saving them). */
export class LocalSendLimits implements SendLimits {
  constructor(readonly limiter: SendLimiter) {}

  key(upstream: string, sendsAs: string): string | undefined {
    return this.limiter.key(upstream, sendsAs);
  }

  async take(key: string, recipients: number, now: number): Promise<LimitCheck> {
    return this.limiter.take(key, recipients, now);
  }

  async uses(now: number): Promise<LimitUse[]> {
    return this.limiter.uses(now);
  }

  async reset(upstream?: string): Promise<number> {
    return this.limiter.reset(upstream);
  }

  async close(): Promise<void> {}
}
