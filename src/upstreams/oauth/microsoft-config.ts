import { z } from 'zod';
import { secret } from '../../config/secret.js';

/**
 * `microsoft.apps.<name>`: one Entra ID app registration, used by the Microsoft 365 upstreams
 * (m365-smtp, graph) through the client-credentials flow. Exactly one credential: a client secret or a
 * certificate (its SHA-256 thumbprint as shown in the portal, and its private key as PEM).
 */
const thumbprint = z
  .string()
  .transform((v) => v.replace(/[:\s]/g, '').toLowerCase())
  .refine((v) => /^[0-9a-f]{64}$/.test(v), { error: 'expected a SHA-256 thumbprint: 64 hexadecimal digits' });

const httpsUrl = z
  .string()
  .refine((v) => URL.canParse(v) && new URL(v).protocol === 'https:', { error: 'expected an https:// URL' })
  .transform((v) => v.replace(/\/+$/, ''));

export const microsoftApp = z
  .strictObject({
    /** Directory (tenant) ID, or a verified domain of the tenant. */
    tenantId: z.string().regex(/^[A-Za-z0-9.-]+$/, { error: 'expected the directory (tenant) ID, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47' }),
    /** Application (client) ID of the app registration. */
    clientId: z.string().min(1),
    clientSecret: secret.optional(),
    certificate: z
      .strictObject({
        thumbprintSha256: thumbprint,
        /** PEM private key ("-----BEGIN PRIVATE KEY-----"); usually { file: /etc/smarthost/app-key.pem }. */
        privateKey: secret,
      })
      .optional(),
    /** Entra ID authority host; national clouds: https://login.microsoftonline.us, https://login.chinacloudapi.cn. */
    authorityHost: httpsUrl.default('https://login.microsoftonline.com'),
    /** Microsoft Graph endpoint for the graph upstream; national clouds have their own. */
    graphBaseUrl: httpsUrl.default('https://graph.microsoft.com/v1.0'),
    /** Extra CA certificates (PEM file) trusted for the authority and Graph, e.g. behind a TLS-inspecting proxy. */
    caFile: z.string().min(1).optional(),
  })
  .superRefine((app, ctx) => {
    const given = (app.clientSecret ? 1 : 0) + (app.certificate ? 1 : 0);
    if (given !== 1) {
      ctx.addIssue({
        code: 'custom',
        path: [given === 0 ? 'clientSecret' : 'certificate'],
        message: given === 0 ? 'expected exactly one credential: clientSecret or certificate (none is set)' : 'expected exactly one credential: clientSecret or certificate, not both',
      });
    }
  });

export const microsoftSection = z.strictObject({
  /** App registrations by name; upstreams refer to one with `app: <name>`. */
  apps: z.record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, { error: 'expected a name of letters, digits, "_", "." or "-" (at most 64)' }), microsoftApp).default({}),
});

export type MicrosoftAppConfig = z.output<typeof microsoftApp>;
export type MicrosoftConfig = z.output<typeof microsoftSection>;

/**
 * The cross-check schema.ts runs on the whole config: every upstream with an `app` key (m365-smtp, graph)
 * must name an app registration defined under microsoft.apps.
 */
export function appReferenceProblems(config: {
  upstreams: Readonly<Record<string, object>>;
  microsoft: { apps: Readonly<Record<string, unknown>> };
}): { path: (string | number)[]; message: string; input: unknown }[] {
  const defined = Object.keys(config.microsoft.apps);
  return Object.entries(config.upstreams).flatMap(([name, u]) => {
    const app = (u as { app?: unknown }).app;
    if (typeof app !== 'string' || Object.hasOwn(config.microsoft.apps, app)) return [];
    return [{
      path: ['upstreams', name, 'app'],
      message: `names no app registration under microsoft.apps; ${defined.length > 0 ? `defined: ${defined.join(', ')}` : 'none is defined'}`,
      input: app,
    }];
  });
}
