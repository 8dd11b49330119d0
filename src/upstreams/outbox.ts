import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { OutboxUpstreamConfig } from '../config/schema.js';
import type { DeliveryRequest, RecipientOutcome, Upstream } from './upstream.js';

/**
 * Delivers into a directory of .eml files, one per delivery, with Return-Path and Delivered-To
 * prepended as a final delivery agent would. For trying smarthost out and for tests: no network.
 */
export class OutboxUpstream implements Upstream {
  constructor(
    readonly name: string,
    private readonly config: OutboxUpstreamConfig,
  ) {}

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    await mkdir(this.config.dir, { recursive: true });
    const base = `${request.queueId}-${randomBytes(4).toString('hex')}`;
    const tmp = join(this.config.dir, `.${base}.tmp`);
    const file = join(this.config.dir, `${base}.eml`);
    const trace = [`Return-Path: <${request.sender}>`, ...request.recipients.map((r) => `Delivered-To: ${r}`)].join('\r\n') + '\r\n';
    try {
      await pipeline(Readable.from(prepend(Buffer.from(trace), request.openMessage())), createWriteStream(tmp, { flags: 'wx', flush: true }));
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return request.recipients.map((recipient) => ({ recipient, delivered: true, reply: `written to ${file}` }));
  }

  async close(): Promise<void> {}
}

async function* prepend(head: Buffer, body: Readable): AsyncGenerator<Buffer> {
  yield head;
  for await (const chunk of body) yield chunk as Buffer;
}
