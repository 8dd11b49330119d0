/**
 * The large-message path: a draft in the mailbox, its attachments, then send
 * (https://learn.microsoft.com/graph/api/user-post-messages, https://learn.microsoft.com/graph/api/message-send).
 * Drafts need the application permission Mail.ReadWrite besides Mail.Send.
 *
 * 1. First read (mailparser): subject, text or HTML body, From, Sender, Reply-To, Message-ID, importance,
 *    custom x- headers, the recipients made exact (recipients.ts), and every attachment's decoded size. Small
 *    attachments ride in the draft's POST while it stays under the request limit.
 * 2. POST /users/{mailbox}/messages creates the draft.
 * 3. Second read: every other attachment, by POST .../messages/{id}/attachments while that request fits
 *    MAX_REQUEST_BODY, otherwise by an upload session (POST .../attachments/createUploadSession, then PUT
 *    ranges of UPLOAD_CHUNK bytes to its pre-authenticated uploadUrl, without Authorization; 200 with
 *    nextExpectedRanges until the last range, 201 with Location:
 *    https://learn.microsoft.com/graph/outlook-large-attachments).
 * 4. POST .../messages/{id}/send. On any failure after step 2 the draft is deleted (best effort).
 *
 * Graph rebuilds the MIME from these properties, so unlike the MIME path the message is re-encoded; headers
 * Graph does not take (In-Reply-To, References, Date, non-x- extension headers) are lost.
 */
import type { Readable } from 'node:stream';
import libmime from 'libmime';
import type { AttachmentStream } from 'mailparser';
import { SmtpError } from '../../smtp-error.js';
import type { Mailbox } from '../../rewrite/header-block.js';
import type { GraphClient } from './client.js';
import { GraphHttpError } from './errors.js';
import { base64Length, GRAPH_REQUEST_LIMIT, MAX_ATTACHMENT, MAX_REQUEST_BODY, UPLOAD_CHUNK } from './limits.js';
import { headerValues, mailboxes, measure, parseMessage } from './message-parts.js';
import { planRecipients, type RecipientPlan } from './recipients.js';

/** Small attachments carried in the draft's own POST, in all (raw bytes); the rest go one by one. */
const DRAFT_ATTACHMENT_BUDGET = 2_000_000;

/**
 * Custom headers a message may carry through Graph: names starting with x- ("Add custom headers only when
 * creating a message, and name them starting with x-", https://learn.microsoft.com/graph/api/resources/message).
 * Exchange's own organisation headers are never copied ([MS-OXCMAIL] reserved prefixes), and at most five
 * are sent: Graph has refused more in practice (not in its documentation).
 */
const MAX_CUSTOM_HEADERS = 5;
const RESERVED_HEADER = /^x-(ms-exchange-organization-|microsoft-exchange-organization-|microsoft-exchange-forest-|ms-exchange-forest-)/i;

/**
 * PidTagDeleteAfterSubmit (0x0E01, Boolean): "If this property is set to 0x01, the message is deleted after
 * the message is sent" ([MS-OXOMSG] 3.3.5.1.3). How saveToSentItems: false is honoured for a draft, since
 * message: send always keeps a copy otherwise.
 */
export const DELETE_AFTER_SUBMIT = { id: 'Boolean 0x0E01', value: 'true' } as const;

interface AttachmentInfo {
  name: string;
  contentType: string;
  size: number;
  isInline: boolean;
  contentId?: string;
  /** Set when the attachment goes in the draft's POST. */
  bytes?: Buffer;
}

export interface DraftPlan {
  message: Record<string, unknown>;
  recipients: RecipientPlan;
  attachments: AttachmentInfo[];
}

type EmailAddress = { emailAddress: { address: string; name?: string } };
const recipient = (m: Mailbox): EmailAddress => ({ emailAddress: m.name ? { address: m.address, name: m.name } : { address: m.address } });

/** First read: the draft's JSON (small attachments included where they fit) and what remains to upload. */
export async function planDraft(open: () => Readable, envelope: readonly string[], saveToSentItems: boolean): Promise<DraftPlan> {
  const attachments: AttachmentInfo[] = [];
  let budget = DRAFT_ATTACHMENT_BUDGET;
  const { headerLines, text } = await parseMessage(open(), async (a, index) => {
    const { size, bytes } = await measure(a.content, (n) => n <= budget);
    if (size > MAX_ATTACHMENT) {
      throw new SmtpError(552, '5.3.4', `attachment ${describe(a, index)} is ${size} bytes; Graph takes attachments up to ${MAX_ATTACHMENT} bytes`);
    }
    if (bytes) budget -= size;
    attachments.push({ ...describeAttachment(a, index, size), ...(bytes ? { bytes } : {}) });
  });

  const recipients = planRecipients({ to: mailboxes(headerLines, 'to'), cc: mailboxes(headerLines, 'cc') }, envelope);
  const [from] = mailboxes(headerLines, 'from');
  const [sender] = mailboxes(headerLines, 'sender');
  const messageId = headerValues(headerLines, 'message-id')[0];
  const importance = /^(high|low)$/i.exec(headerValues(headerLines, 'importance')[0] ?? '')?.[1]?.toLowerCase();
  const custom = headerLines
    .filter((l) => l.key.startsWith('x-') && !RESERVED_HEADER.test(l.key))
    .slice(0, MAX_CUSTOM_HEADERS)
    .map((l) => ({ name: l.line.slice(0, l.line.indexOf(':')).trim(), value: headerValues([l], l.key)[0] ?? '' }));
  const message: Record<string, unknown> = {
    subject: subjectOf(headerLines),
    body: text?.html ? { contentType: 'html', content: text.html } : { contentType: 'text', content: text?.text ?? '' },
    ...(from ? { from: recipient(from) } : {}),
    ...(sender ? { sender: recipient(sender) } : {}),
    toRecipients: recipients.to.map(recipient),
    ccRecipients: recipients.cc.map(recipient),
    bccRecipients: recipients.bcc.map(recipient),
    replyTo: mailboxes(headerLines, 'reply-to').map(recipient),
    // "Updatable only if isDraft = true" (message resource): keeps threading and the sender's Message-ID.
    ...(messageId && /^<[^<>\s]+@[^<>\s]+>$/.test(messageId) ? { internetMessageId: messageId } : {}),
    ...(importance ? { importance } : {}),
    ...(custom.length > 0 ? { internetMessageHeaders: custom } : {}),
    ...(saveToSentItems ? {} : { singleValueExtendedProperties: [DELETE_AFTER_SUBMIT] }),
  };
  return fitDraft(message, recipients, attachments);
}

/** Moves attachments out of the draft's POST (largest first) until it fits one request. */
function fitDraft(message: Record<string, unknown>, recipients: RecipientPlan, attachments: AttachmentInfo[]): DraftPlan {
  const inDraft = () => attachments.filter((a) => a.bytes);
  const bodyOf = () => JSON.stringify({ ...message, attachments: inDraft().map(fileAttachment) });
  let size = Buffer.byteLength(bodyOf());
  while (size > MAX_REQUEST_BODY && inDraft().length > 0) {
    const largest = inDraft().sort((a, b) => b.size - a.size)[0]!;
    delete largest.bytes;
    size = Buffer.byteLength(bodyOf());
  }
  if (size > MAX_REQUEST_BODY) {
    throw new SmtpError(552, '5.3.4', `the message text is too large for Graph: the draft would be ${size} bytes, a Graph request may carry ${MAX_REQUEST_BODY}`);
  }
  const attached = inDraft();
  return { message: attached.length > 0 ? { ...message, attachments: attached.map(fileAttachment) } : message, recipients, attachments };
}

function fileAttachment(a: AttachmentInfo): Record<string, unknown> {
  return {
    '@odata.type': '#microsoft.graph.fileAttachment',
    name: a.name,
    contentType: a.contentType,
    isInline: a.isInline,
    ...(a.contentId ? { contentId: a.contentId } : {}),
    ...(a.bytes ? { contentBytes: a.bytes.toString('base64') } : {}),
  };
}

/** Bytes of the POST .../attachments request for `a`: its JSON, plus the base64, which JSON never escapes. */
function attachmentPostBytes(a: AttachmentInfo): number {
  return Buffer.byteLength(JSON.stringify(fileAttachment({ ...a, bytes: Buffer.alloc(0) }))) + base64Length(a.size);
}

function subjectOf(lines: Parameters<typeof headerValues>[0]): string {
  const raw = headerValues(lines, 'subject')[0];
  if (raw === undefined) return '';
  try {
    return libmime.decodeWords(raw);
  } catch {
    return raw;
  }
}

function describeAttachment(a: AttachmentStream, index: number, size: number): Omit<AttachmentInfo, 'bytes'> {
  const cid = a.cid ?? a.contentId?.replace(/^<|>$/g, '');
  const isInline = Boolean(cid) && (a.related === true || a.contentDisposition === 'inline');
  return {
    name: a.filename ?? defaultName(a.contentType, index),
    contentType: a.contentType || 'application/octet-stream',
    size,
    isInline,
    ...(cid ? { contentId: cid } : {}),
  };
}

function defaultName(contentType: string, index: number): string {
  if (contentType === 'message/rfc822') return `message-${index + 1}.eml`;
  if (contentType === 'message/delivery-status') return `delivery-status-${index + 1}.txt`;
  return `attachment-${index + 1}`;
}

function describe(a: AttachmentStream, index: number): string {
  return a.filename ? `"${a.filename}"` : `#${index + 1}`;
}

/** Steps 2-4: create the draft, upload what is left, send; the draft is deleted if anything fails. */
export async function sendDraft(client: GraphClient, mailbox: string, plan: DraftPlan, open: () => Readable): Promise<string> {
  const user = `/users/${encodeURIComponent(mailbox)}`;
  const body = JSON.stringify(plan.message);
  const created = await client.call(mailbox, { method: 'POST', path: `${user}/messages`, contentType: 'application/json', body });
  const id = created.json<{ id?: unknown }>().id;
  if (typeof id !== 'string') throw new SmtpError(451, '4.3.0', 'Graph created a draft without an id');
  const draft = `${user}/messages/${encodeURIComponent(id)}`;
  try {
    const remaining = plan.attachments.map((a, i) => (a.bytes ? -1 : i)).filter((i) => i >= 0);
    if (remaining.length > 0) await uploadAttachments(client, mailbox, draft, plan.attachments, new Set(remaining), open);
    const sent = await client.call(mailbox, { method: 'POST', path: `${draft}/send`, body: '' });
    return sent.headers['request-id'] ?? '';
  } catch (err) {
    await client.call(mailbox, { method: 'DELETE', path: draft }).catch(() => undefined);
    throw err;
  }
}

async function uploadAttachments(client: GraphClient, mailbox: string, draft: string, infos: AttachmentInfo[], todo: Set<number>, open: () => Readable): Promise<void> {
  await parseMessage(open(), async (a, index) => {
    const info = infos[index];
    if (!todo.has(index) || !info) {
      for await (const skipped of a.content) void skipped;
      return;
    }
    if (attachmentPostBytes(info) <= MAX_REQUEST_BODY) {
      const { size, bytes } = await measure(a.content, () => true);
      checkSize(info, size);
      const body = JSON.stringify(fileAttachment({ ...info, bytes: bytes! }));
      await client.call(mailbox, { method: 'POST', path: `${draft}/attachments`, contentType: 'application/json', body });
      return;
    }
    await uploadSession(client, mailbox, draft, info, a.content);
  });
}

async function uploadSession(client: GraphClient, mailbox: string, draft: string, info: AttachmentInfo, content: Readable): Promise<void> {
  const item = {
    attachmentType: 'file',
    name: info.name,
    size: info.size,
    contentType: info.contentType,
    isInline: info.isInline,
    ...(info.contentId ? { contentId: info.contentId } : {}),
  };
  let session;
  try {
    session = await client.call(mailbox, {
      method: 'POST',
      path: `${draft}/attachments/createUploadSession`,
      contentType: 'application/json',
      body: JSON.stringify({ AttachmentItem: item }),
    });
  } catch (err) {
    // Graph does not state its smallest session exactly ("between 3 MB and 150 MB"). Refusing this one means
    // its MB is larger than read here, so the request limit is read as 4 MiB for this one POST.
    if (!(err instanceof GraphHttpError && err.code === 'ErrorAttachmentSizeShouldNotBeLessThanMinimumSize')) throw err;
    if (attachmentPostBytes(info) > GRAPH_REQUEST_LIMIT) throw err;
    const { size, bytes } = await measure(content, () => true);
    checkSize(info, size);
    const body = JSON.stringify(fileAttachment({ ...info, bytes: bytes! }));
    await client.call(mailbox, { method: 'POST', path: `${draft}/attachments`, contentType: 'application/json', body });
    return;
  }
  const uploadUrl = session.json<{ uploadUrl?: unknown }>().uploadUrl;
  if (typeof uploadUrl !== 'string') throw new SmtpError(451, '4.3.0', 'Graph created an upload session without an uploadUrl');
  const chunk = Buffer.allocUnsafe(Math.min(UPLOAD_CHUNK, info.size));
  let filled = 0;
  let offset = 0;
  const put = async () => {
    const end = offset + filled - 1;
    const answer = await client.call(mailbox, {
      method: 'PUT',
      path: uploadUrl,
      anonymous: true,
      contentType: 'application/octet-stream',
      headers: { 'content-range': `bytes ${offset}-${end}/${info.size}` },
      body: chunk.subarray(0, filled),
    });
    offset = end + 1;
    filled = 0;
    if (offset < info.size && answer.status !== 200) throw new SmtpError(451, '4.3.0', `upload session answered ${answer.status} before the last range`);
    if (offset < info.size) {
      const next = answer.json<{ nextExpectedRanges?: unknown }>().nextExpectedRanges;
      if (!Array.isArray(next) || !String(next[0]).startsWith(`${offset}`)) {
        throw new SmtpError(451, '4.3.0', `upload session expects ${JSON.stringify(next)} after ${offset} bytes`);
      }
    } else if (answer.status !== 201) {
      throw new SmtpError(451, '4.3.0', `upload session answered ${answer.status} to the last range, not 201 Created`);
    }
  };
  for await (const data of content as AsyncIterable<Buffer>) {
    for (let pos = 0; pos < data.length; ) {
      // More bytes than the first read counted: the spooled file changed under us.
      if (offset + filled >= info.size) checkSize(info, offset + filled + data.length - pos);
      const n = Math.min(chunk.length - filled, data.length - pos, info.size - offset - filled);
      data.copy(chunk, filled, pos, pos + n);
      filled += n;
      pos += n;
      if (filled === chunk.length || offset + filled === info.size) await put();
    }
  }
  checkSize(info, offset + filled);
}

function checkSize(info: AttachmentInfo, size: number): void {
  if (size !== info.size) throw new SmtpError(451, '4.3.0', `attachment "${info.name}" read ${size} bytes the second time, ${info.size} the first`);
}

