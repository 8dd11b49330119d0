import { z } from 'zod';
import { intBetween } from '../config/units.js';
import type { LimitsConfig } from './limits.js';

const count = intBetween(1, 100_000_000);

/**
 * `upstreams.<name>.limits`: messages and recipients per minute, hour, day and week. The Microsoft upstreams
 * start from the documented Exchange Online sending limits (PRESETS); any key given here overrides the preset,
 * and `limits: false` turns the preset off.
 */
export const limitsSchema = z.union([
  z.literal(false),
  z.strictObject({
    messagesPerMinute: count.optional(),
    messagesPerHour: count.optional(),
    messagesPerDay: count.optional(),
    messagesPerWeek: count.optional(),
    recipientsPerMinute: count.optional(),
    recipientsPerHour: count.optional(),
    recipientsPerDay: count.optional(),
    recipientsPerWeek: count.optional(),
    /**
     * Count each mailbox the upstream sends as on its own, as Exchange Online counts per mailbox: the one that
     * logs in (a fixed mailbox carries every sender), or each envelope sender after rewriting (mailbox:
     * fromSender, and upstreams that log in as no mailbox: smtp, mailjet).
     */
    perMailbox: z.boolean().optional(),
    /** fixed: windows reset whole at each minute, hour, UTC day or week (Monday); sliding: the last minute, hour... */
    mode: z.enum(['fixed', 'sliding']).optional(),
  }),
]);

export type LimitsSetting = z.output<typeof limitsSchema>;

/**
 * Exchange Online's sending limits, per mailbox over a rolling window: 30 messages a minute (SMTP client
 * submission) and 10,000 recipients a day (every way of sending, Graph's sendMail included).
 * https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits-1
 */
export const LIMIT_PRESETS: Readonly<Record<string, LimitsConfig>> = {
  'm365-smtp': { messagesPerMinute: 30, recipientsPerDay: 10_000, perMailbox: true, mode: 'sliding' },
  graph: { recipientsPerDay: 10_000, perMailbox: true, mode: 'sliding' },
};

/** The limits in force for one upstream: its preset with the configured keys over it; undefined = unlimited. */
export function resolveLimits(upstream: { type: string; limits?: LimitsSetting | undefined }): LimitsConfig | undefined {
  if (upstream.limits === false) return undefined;
  const preset = LIMIT_PRESETS[upstream.type];
  if (!preset && !upstream.limits) return undefined;
  const merged: LimitsConfig = { perMailbox: false, mode: 'fixed', ...preset };
  for (const [key, value] of Object.entries(upstream.limits ?? {})) if (value !== undefined) (merged as unknown as Record<string, unknown>)[key] = value;
  return merged;
}

/** Every limited upstream's limits, by name. */
export function configuredLimits(upstreams: Readonly<Record<string, { type: string; limits?: LimitsSetting | undefined }>>): Map<string, LimitsConfig> {
  const out = new Map<string, LimitsConfig>();
  for (const [name, u] of Object.entries(upstreams)) {
    const limits = resolveLimits(u);
    if (limits) out.set(name, limits);
  }
  return out;
}
