/**
 * Test messages built with nodemailer's MailComposer (real MIME: multipart/alternative inside
 * multipart/related inside multipart/mixed, base64 parts, encoded words), with CRLF line endings as
 * smarthost spools them.
 */
import { Readable } from 'node:stream';
import MailComposer from 'nodemailer/lib/mail-composer';
import type { DeliveryRequest } from '../../src/upstreams/upstream.js';

export type ComposeOptions = ConstructorParameters<typeof MailComposer>[0];

export async function compose(options: ComposeOptions): Promise<Buffer> {
  const raw = await new MailComposer(options).compile().build();
  return Buffer.from(raw.toString('binary').replace(/\r?\n/g, '\r\n'), 'binary');
}

/** A 1x1 PNG. */
export const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64');
/** Bytes that look like a small PDF. */
export const PDF = Buffer.from('%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n', 'latin1');

/** The message most tests send: text and HTML alternatives, an inline image referenced by cid, a PDF attachment. */
export function richMessage(extra: Partial<ComposeOptions> = {}): ComposeOptions {
  return {
    from: { name: 'Scanner Floor 2', address: 'scans@contoso.test' },
    to: [{ name: 'Alice Example', address: 'alice@dest.test' }, 'bob@dest.test'],
    cc: [{ name: 'Carol', address: 'carol@dest.test' }],
    replyTo: 'helpdesk@contoso.test',
    subject: 'Scan ready: Größe A4',
    messageId: '<scan-1@contoso.test>',
    headers: { 'X-Tag': 'invoice', 'X-Custom-Header': 'custom value', 'In-Reply-To': '<thread-1@contoso.test>' },
    text: 'Your scan is attached.\nLogo below.',
    html: '<p>Your scan is attached.</p><img src="cid:logo@contoso.test" alt="logo">',
    attachments: [
      { filename: 'logo.png', content: PNG, contentType: 'image/png', cid: 'logo@contoso.test' },
      { filename: 'scan-0001.pdf', content: PDF, contentType: 'application/pdf' },
    ],
    ...extra,
  };
}

/** A DeliveryRequest over an in-memory message, for driving an upstream without a daemon. */
export function deliveryRequest(raw: Buffer, recipients: string[], o: { queueId?: string; sender?: string } = {}): DeliveryRequest {
  return {
    queueId: o.queueId ?? '01TESTQUEUEID000000000A',
    sender: o.sender ?? 'scans@contoso.test',
    recipients,
    size: raw.length,
    openMessage: () => Readable.from([raw]),
  };
}
