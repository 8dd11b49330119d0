import { isAscii } from 'node:buffer';
import { Readable } from 'node:stream';
import type { Config } from '../config/schema.js';
import { LOCAL_SOURCE } from '../delivery/bounce.js';
import type { Clock } from '../delivery/clock.js';
import type { Logger } from '../log.js';
import { checkEnvelopeAddress } from '../policy/address-policy.js';
import { newQueueId } from '../spool/queue-id.js';
import { createRecord, type MessageRecord } from '../spool/record.js';
import type { Spool } from '../spool/spool.js';
import { ApiError } from './server.js';

/**
 * `smarthost send-test`: a small message queued through the spool like any accepted message, so it takes the
 * real path (routes, rewriting, the upstream, retries, a DSN if it fails).
 */
export async function queueTestMessage(
  o: { config: Readonly<Config>; spool: Spool; clock: Clock; log: Logger; enqueue(record: MessageRecord): void },
  request: { to: unknown; route?: unknown },
): Promise<{ queueId: string; sender: string; to: string; route?: string }> {
  if (typeof request.to !== 'string' || !/^[^@\s<>]+@[^@\s<>]+$/.test(request.to)) throw new ApiError(400, 'expected "to": an e-mail address such as someone@contoso.com');
  const bad = checkEnvelopeAddress(request.to, 'recipient');
  if (bad) throw new ApiError(400, bad.message);
  const route = request.route;
  if (route !== undefined && (typeof route !== 'string' || !o.config.routing.routes.some((r) => r.name === route))) {
    const names = o.config.routing.routes.map((r) => r.name);
    throw new ApiError(400, `no route named ${JSON.stringify(route)}; routes: ${names.length > 0 ? names.join(', ') : 'none are configured'}`);
  }
  const sender = o.config.admin.testSender ?? `postmaster@${o.config.hostname}`;
  const now = o.clock.now();
  const id = newQueueId(now);
  const messageId = `<${id}.test@${o.config.hostname}>`;
  const text = [
    `From: smarthost test <${sender}>`,
    `To: <${request.to}>`,
    `Subject: smarthost test message`,
    `Date: ${new Date(now).toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: ${messageId}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Auto-Submitted: auto-generated',
    '',
    `This is a test message from the smarthost relay ${o.config.hostname} (queue ID ${id}),`,
    `sent with "smarthost send-test"${typeof route === 'string' ? ` through route ${route}` : ''}.`,
    'If it arrived, the path from the relay to this mailbox works.',
    '',
  ].join('\r\n');
  const body = Buffer.from(text);
  const record = createRecord({
    id,
    sender,
    recipients: [request.to],
    receivedAt: now,
    size: body.length,
    messageId,
    headerFrom: [sender],
    client: { address: '127.0.0.1', listener: LOCAL_SOURCE, tls: false },
    ...(typeof route === 'string' ? { route } : {}),
    // A UTF-8 sender or recipient is written into From and To.
    ...(isAscii(body) ? {} : { eightBit: true }),
  });
  await o.spool.store(Readable.from([body]), record);
  o.log.info({ event: 'received', queueId: id, listener: LOCAL_SOURCE, source: 'send-test', sender, recipients: [request.to], size: body.length, messageId, ...(typeof route === 'string' ? { route } : {}) }, 'test message queued');
  o.enqueue(record);
  return { queueId: id, sender, to: request.to, ...(typeof route === 'string' ? { route } : {}) };
}
