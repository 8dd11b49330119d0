import { z } from 'zod';

const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$/;
const DURATION_UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

const DURATION_ERROR = 'expected a duration such as 30s, 5m, 4h or 5d (a bare number means seconds)';

/** A duration written as seconds (number) or with a unit ("250ms", "30s", "5m", "4h", "5d"); yields milliseconds. */
export const duration = z
  .union([z.number().nonnegative({ error: DURATION_ERROR }), z.string().regex(DURATION, { error: DURATION_ERROR })], { error: DURATION_ERROR })
  .transform((v) => {
    if (typeof v === 'number') return Math.round(v * 1000);
    const [, amount, unit] = DURATION.exec(v)!;
    return Math.round(Number(amount) * DURATION_UNIT_MS[unit as keyof typeof DURATION_UNIT_MS]);
  });

const SIZE = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$/i;
const SIZE_UNIT: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };

const SIZE_ERROR = 'expected a size such as 25MB, 512KiB or a byte count';

/** A byte size written as a number or with a unit ("25MB", "512KiB"); yields bytes. */
export const byteSize = z
  .union([z.int({ error: SIZE_ERROR }).nonnegative({ error: SIZE_ERROR }), z.string().regex(SIZE, { error: SIZE_ERROR })], { error: SIZE_ERROR })
  .transform((v) => {
    if (typeof v === 'number') return v;
    const [, amount, unit] = SIZE.exec(v)!;
    return Math.round(Number(amount) * SIZE_UNIT[(unit ?? 'b').toLowerCase()]!);
  });

export function intBetween(min: number, max: number) {
  const error = `expected an integer ${min}-${max}`;
  return z.int({ error }).min(min, { error }).max(max, { error });
}

export const port = intBetween(1, 65535);

const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]', 'localhost']);

/**
 * An endpoint URL that credentials travel to: https only, except plain http on loopback (the tests' local
 * fakes). A trailing slash is dropped so paths can be appended.
 */
export function httpsUrl(example: string) {
  return z
    .string()
    .superRefine((v, ctx) => {
      let url: URL;
      try {
        url = new URL(v);
      } catch {
        ctx.addIssue({ code: 'custom', message: `expected a URL such as ${example}`, input: v });
        return;
      }
      if (url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))) return;
      ctx.addIssue({ code: 'custom', message: 'expected an https URL (plain http only on loopback, for tests)', input: v });
    })
    .transform((v) => v.replace(/\/+$/, ''));
}
