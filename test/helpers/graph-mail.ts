/**
 * Messages and token sources for the Graph tests: MIME built by nodemailer's MailComposer (CRLF, base64
 * attachments, as a scanner would send), delivery requests over an in-memory message, and static tokens.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import MailComposer from 'nodemailer/lib/mail-composer';
import type { AccessToken, TokenSource } from '../../src/upstreams/oauth/token-source.js';
import type { DeliveryRequest } from '../../src/upstreams/upstream.js';

export interface TestAttachment {
  filename: string;
  content: Buffer;
  contentType?: string;
  cid?: string;
}

export async function buildMessage(o: {
  from?: string;
  to?: string | string[];
  cc?: string | string[];
  subject?: string;
  text?: string;
  html?: string;
  attachments?: TestAttachment[];
  headers?: Record<string, string>;
  messageId?: string;
}): Promise<Buffer> {
  const composer = new MailComposer({
    from: o.from ?? 'Scanner <scanner@contoso.test>',
    ...(o.to ? { to: o.to } : {}),
    ...(o.cc ? { cc: o.cc } : {}),
    subject: o.subject ?? 'Scan',
    ...(o.text !== undefined ? { text: o.text } : {}),
    ...(o.html !== undefined ? { html: o.html } : {}),
    ...(o.headers ? { headers: o.headers } : {}),
    messageId: o.messageId ?? `<${randomBytes(6).toString('hex')}@contoso.test>`,
    attachments: (o.attachments ?? []).map((a) => ({ filename: a.filename, content: a.content, ...(a.contentType ? { contentType: a.contentType } : {}), ...(a.cid ? { cid: a.cid } : {}) })),
  });
  return composer.compile().build();
}

/** Random bytes that do not compress or repeat, so a byte-identical comparison means something. */
export function scanBytes(size: number): Buffer {
  return randomBytes(size);
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export function requestFor(raw: Buffer, recipients: string[], sender = 'scanner@contoso.test'): DeliveryRequest & { readonly opened: number } {
  let opened = 0;
  const request = {
    queueId: 'TESTQUEUEID',
    sender,
    recipients,
    size: raw.length,
    openMessage: () => {
      opened++;
      // Several chunks, as a file stream would hand them over.
      const chunks: Buffer[] = [];
      for (let i = 0; i < raw.length; i += 64 * 1024) chunks.push(raw.subarray(i, i + 64 * 1024));
      return Readable.from(chunks);
    },
    get opened() {
      return opened;
    },
  };
  return request;
}

/** Tokens from a list: `token` normally, `fresh` when a refresh is forced. Records every call. */
export class StaticTokens implements TokenSource {
  readonly calls: { scope: string; forceRefresh: boolean }[] = [];

  constructor(
    private token: string,
    private readonly fresh = token,
  ) {}

  async getToken(scope: string, options?: { forceRefresh?: boolean }): Promise<AccessToken> {
    this.calls.push({ scope, forceRefresh: options?.forceRefresh === true });
    if (options?.forceRefresh) this.token = this.fresh;
    return { token: this.token, expiresAt: Date.now() + 3_600_000 };
  }
}

/** An unsigned JWT-shaped token carrying app roles, as Entra ID puts them in app-only tokens. */
export function jwtWithRoles(roles: string[], id = randomBytes(4).toString('hex')): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part({ aud: 'https://graph.microsoft.com', roles, jti: id })}.sig`;
}
