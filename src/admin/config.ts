/**
 * The admin HTTP listener's settings (metrics, health, the JSON API behind the queue CLI):
 *
 *   admin:
 *     host: 127.0.0.1        # loopback by default; any other address needs a token
 *     port: 9325             # 0: any free port (tests)
 *     token: { env: SMARTHOST_ADMIN_TOKEN }   # bearer token for /api/... (and /metrics) when set
 *     enabled: true
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { secret } from '../config/secret.js';
import { byteSize, duration, intBetween } from '../config/units.js';

export const DEFAULT_ADMIN_PORT = 9325;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;

/** 127.0.0.0/8, ::1 and "localhost": reachable only from this machine. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return /^::ffff:127\./i.test(host);
}

const address = z.string().regex(/^[^@\s<>]+@[^@\s<>]+$/, { error: 'expected an e-mail address such as postmaster@contoso.com' });

export const adminSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    host: z.string().min(1).default('127.0.0.1'),
    port: intBetween(0, 65535).default(DEFAULT_ADMIN_PORT),
    token: secret.optional(),
    /** /readyz fails when the spool's file system has less free space than this. */
    minFreeBytes: byteSize.prefault('100MB'),
    /** Consecutive connection-level failures (4.4.x) after which an upstream counts as down. */
    upstreamDownAfter: intBetween(1, 1000).default(3),
    /** /readyz fails when an upstream has been down for longer than this. */
    upstreamDownReadyAfter: duration.prefault('15m'),
    /** A down upstream is skipped by routes with fallbacks for this long, then one delivery probes it. */
    upstreamProbeAfter: duration.prefault('1m'),
    /** Sender of `smarthost send-test`; default postmaster@<hostname>. */
    testSender: address.optional(),
  })
  .superRefine((admin, ctx) => {
    if (admin.enabled && !admin.token && !isLoopbackHost(admin.host)) {
      ctx.addIssue({
        code: 'custom',
        path: ['token'],
        message: `required when admin.host (${admin.host}) is not a loopback address: the admin API can change the queue`,
      });
    }
  });

export type AdminConfig = z.output<typeof adminSchema>;
