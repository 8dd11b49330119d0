/**
 * A Microsoft Graph mail endpoint on 127.0.0.1 (plain HTTP: the Graph base URL is configurable), following
 * Microsoft's documentation for the calls smarthost makes. It records what Exchange would have delivered to
 * whom, and misbehaves on command.
 *
 * Followed documentation:
 * - user: sendMail (https://learn.microsoft.com/graph/api/user-sendmail): JSON ({message, saveToSentItems},
 *   Content-Type application/json) or MIME (base64 of the message, Content-Type text/plain); 202 Accepted;
 *   malformed base64 gives 400 ErrorMimeContentInvalidBase64String "Invalid base64 string for MIME content.".
 * - Create message (https://learn.microsoft.com/graph/api/user-post-messages): a draft from JSON or MIME
 *   (recipients from the To, CC and BCC headers), 201 with the message; needs Mail.ReadWrite.
 * - Update (PATCH) and delete a message; message: send (https://learn.microsoft.com/graph/api/message-send),
 *   202, needs Mail.Send.
 * - Add attachment (POST .../attachments, a fileAttachment with base64 contentBytes).
 * - attachment: createUploadSession (https://learn.microsoft.com/graph/api/attachment-createuploadsession) for
 *   files "between 3 MB and 150 MB", then PUT ranges to the pre-authenticated uploadUrl without Authorization,
 *   Content-Range "bytes {start}-{end}/{total}", in order; 200 with nextExpectedRanges, the last 201 with
 *   Location (https://learn.microsoft.com/graph/outlook-large-attachments). A file under 2 MiB is refused with
 *   ErrorAttachmentSizeShouldNotBeLessThanMinimumSize: Microsoft gives no exact minimum, and 2,097,152 bytes is
 *   what a user measured against Graph in 2020 (https://github.com/microsoftgraph/msgraph-sdk-java/pull/52).
 *   A file just under 3 MB cannot be POSTed within 4,000,000 bytes (its base64 alone is about that), so a
 *   session must take it.
 * - Request size: 413 when a request body passes 4 MB ("The maximum request length supported is 4MB", the
 *   413 of user: sendMail, https://learn.microsoft.com/graph/api/user-sendmail), taken in decimal as
 *   4,000,000 bytes. Microsoft never says which MB it means ("up to 4 MB each time" for upload ranges, "4 MB"
 *   for MIME payloads); the decimal reading is the stricter, so what passes here passes either.
 * - Throttling (https://learn.microsoft.com/graph/throttling, throttling-limits#outlook-service-limits): 429
 *   with Retry-After, including when a mailbox has more than 4 requests in flight ("Application is over its
 *   MailboxConcurrency limit."), and 503 with Retry-After on command.
 * - ErrorSendAsDenied, 403 (https://learn.microsoft.com/graph/outlook-send-mail-from-other-user), on command.
 * - 401 InvalidAuthenticationToken for a missing or refused bearer token; 403 ErrorAccessDenied for a token
 *   without the needed role or a mailbox outside the app's access policy.
 * - The error body shape {"error": {"code", "message"}} (https://learn.microsoft.com/graph/errors).
 *
 * Where the documentation names no error code (413, a bad Content-Range), the code here is a placeholder.
 */
import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { simpleParser, type AddressObject } from 'mailparser';

export const FAKE_REQUEST_LIMIT = 4_000_000;
const MIN_UPLOAD_SESSION = 2 * 1024 * 1024;
const MAX_UPLOAD_SESSION = 150 * 1024 * 1024;
const DELETE_AFTER_SUBMIT = 'boolean 0x0e01';

export type TokenCheck = { ok: true; roles?: readonly string[] } | { ok: false; reason: string };

export interface GraphFakeOptions {
  /** Pluggable token check (integration tests: the fake identity provider's tokens). */
  validateToken?: (token: string) => TokenCheck | Promise<TokenCheck>;
  /** Or a static set of valid tokens, carrying Mail.Send and Mail.ReadWrite (unit tests). */
  tokens?: Iterable<string>;
  /** Requests in flight per mailbox before 429 (Exchange Online: 4). */
  maxConcurrentPerMailbox?: number;
  /** When given, any other mailbox is 404 ErrorInvalidUser. */
  mailboxes?: Iterable<string>;
}

export interface FakeAttachment {
  name: string;
  contentType: string;
  isInline: boolean;
  contentId?: string;
  content: Buffer;
  /** How it reached the draft. */
  via: 'draft' | 'post' | 'upload';
}

/** What Exchange would have delivered: one entry per accepted send. */
export interface GraphDelivery {
  mailbox: string;
  via: 'mime' | 'json' | 'draft' | 'mime-draft';
  /** Everyone Graph delivers to: To, Cc and Bcc, lower-cased. */
  recipients: string[];
  to: string[];
  cc: string[];
  bcc: string[];
  from?: string;
  subject: string;
  /** The MIME message as received (MIME sends and MIME drafts). */
  mime?: Buffer;
  /** The JSON message (drafts and JSON sends), attachments' bytes removed. */
  message?: Record<string, unknown>;
  attachments: FakeAttachment[];
  savedToSentItems: boolean;
}

export interface RequestRecord {
  method: string;
  path: string;
  mailbox?: string;
  status: number;
  bodyBytes: number;
  authorization: boolean;
  contentRange?: string;
}

interface Draft {
  id: string;
  mailbox: string;
  message: Record<string, unknown>;
  mime?: Buffer;
  parsed?: { to: string[]; cc: string[]; bcc: string[]; from?: string; subject: string };
  attachments: FakeAttachment[];
}

interface UploadSession {
  id: string;
  authtoken: string;
  draft: Draft;
  item: { name: string; size: number; contentType: string; isInline: boolean; contentId?: string };
  chunks: Buffer[];
  received: number;
}

interface Injected {
  status: number;
  code: string;
  message: string;
  retryAfterSeconds?: number;
  times: number;
  /** Requests for the mailbox let through before this one fires. */
  after: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export class GraphFake {
  readonly deliveries: GraphDelivery[] = [];
  readonly requests: RequestRecord[] = [];
  readonly drafts = new Map<string, Draft>();
  /** The largest request body seen, in bytes, and how many passed the limit (413). */
  maxRequestBytes = 0;
  oversizedRequests = 0;
  readonly maxInFlight = new Map<string, number>();
  readonly #inFlight = new Map<string, number>();
  readonly #sessions = new Map<string, UploadSession>();
  readonly #injected = new Map<string, Injected[]>();
  readonly #sendAsDenied = new Set<string>();
  readonly #blocked = new Set<string>();
  readonly #waiters = new Set<() => void>();
  #gate: Promise<void> | undefined;
  #server!: http.Server;
  port = 0;

  constructor(private readonly options: GraphFakeOptions) {}

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** What to configure as graphBaseUrl. */
  get baseUrl(): string {
    return `${this.origin}/v1.0`;
  }

  async start(): Promise<this> {
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as AddressInfo).port;
    return this;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** After `after` more requests, the next `times` requests for `mailbox` get `status` (429 or 503) with Retry-After. */
  throttle(mailbox: string, o: { times?: number; after?: number; retryAfterSeconds: number; status?: 429 | 503 }): void {
    const status = o.status ?? 429;
    const [code, message] = status === 429 ? ['ApplicationThrottled', 'Application is over its MailboxConcurrency limit.'] : ['ServiceUnavailable', 'Service unavailable.'];
    this.inject(mailbox, { status, code, message, retryAfterSeconds: o.retryAfterSeconds, times: o.times ?? 1, after: o.after ?? 0 });
  }

  /** After `after` more requests, the next `times` requests for `mailbox` fail with this Graph error. */
  inject(mailbox: string, e: Omit<Injected, 'times' | 'after'> & { times?: number; after?: number }): void {
    const list = this.#injected.get(mailbox.toLowerCase()) ?? [];
    list.push({ ...e, times: e.times ?? 1, after: e.after ?? 0 });
    this.#injected.set(mailbox.toLowerCase(), list);
  }

  /** Sends from `mailbox` fail with 403 ErrorSendAsDenied until allowed again. */
  denySendAs(mailbox: string, denied = true): void {
    if (denied) this.#sendAsDenied.add(mailbox.toLowerCase());
    else this.#sendAsDenied.delete(mailbox.toLowerCase());
  }

  /** The app's application access policy excludes `mailbox`: every request for it gets 403 ErrorAccessDenied. */
  blockMailbox(mailbox: string): void {
    this.#blocked.add(mailbox.toLowerCase());
  }

  /** Holds every Graph request after it is counted in flight, until the returned function is called. */
  hold(): () => void {
    let release!: () => void;
    this.#gate = new Promise<void>((resolve) => (release = resolve));
    return () => {
      this.#gate = undefined;
      release();
    };
  }

  inFlight(mailbox: string): number {
    return this.#inFlight.get(mailbox.toLowerCase()) ?? 0;
  }

  /** Resolves once `done()` holds, re-checked after every request; rejects after timeoutMs. */
  waitUntil(done: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!done()) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => (this.#waiters.delete(check), reject(new Error(`timed out waiting for ${what}`))), timeoutMs);
      this.#waiters.add(check);
    });
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.origin);
    const record: RequestRecord = { method: req.method ?? '', path: url.pathname, status: 0, bodyBytes: 0, authorization: req.headers.authorization !== undefined };
    if (req.headers['content-range']) record.contentRange = String(req.headers['content-range']);
    let mailbox: string | undefined;
    try {
      const body = await readBody(req, FAKE_REQUEST_LIMIT);
      record.bodyBytes = body.size;
      this.maxRequestBytes = Math.max(this.maxRequestBytes, body.size);
      if (!body.data) {
        this.oversizedRequests++;
        throw new HttpError(413, 'RequestEntityTooLarge', 'The maximum request length supported is 4MB.');
      }
      if (url.pathname.startsWith('/upload/')) return this.#answer(res, record, await this.#upload(req, url, body.data));
      const m = /^\/v1\.0\/users\/([^/]+)(\/.*)?$/.exec(url.pathname);
      if (!m) throw new HttpError(400, 'BadRequest', `Resource not found for the segment '${url.pathname}'.`);
      mailbox = decodeURIComponent(m[1]!).toLowerCase();
      record.mailbox = mailbox;
      const roles = await this.#authorize(req);
      this.#inFlight.set(mailbox, this.inFlight(mailbox) + 1);
      this.maxInFlight.set(mailbox, Math.max(this.maxInFlight.get(mailbox) ?? 0, this.inFlight(mailbox)));
      try {
        this.#notify();
        await this.#gate;
        if (this.inFlight(mailbox) > (this.options.maxConcurrentPerMailbox ?? 4)) {
          throw new HttpError(429, 'ApplicationThrottled', 'Application is over its MailboxConcurrency limit.', { 'retry-after': '1' });
        }
        this.#takeInjected(mailbox);
        if (this.#blocked.has(mailbox)) throw new HttpError(403, 'ErrorAccessDenied', 'Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.');
        if (this.options.mailboxes && ![...this.options.mailboxes].some((b) => b.toLowerCase() === mailbox)) {
          throw new HttpError(404, 'ErrorInvalidUser', `The requested user '${mailbox}' is invalid.`);
        }
        const answer = await this.#route(req.method ?? '', mailbox, m[2] ?? '', req, body.data, roles, url);
        this.#answer(res, record, answer);
      } finally {
        this.#inFlight.set(mailbox, this.inFlight(mailbox) - 1);
      }
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, 'InternalServerError', String(err));
      this.#answer(res, record, { status: e.status, headers: e.headers, json: { error: { code: e.code, message: e.message, innerError: { date: new Date().toISOString() } } } });
    }
  }

  #answer(res: ServerResponse, record: RequestRecord, a: Answer): void {
    record.status = a.status;
    this.requests.push(record);
    const body = a.json === undefined ? '' : JSON.stringify(a.json);
    res.writeHead(a.status, { 'request-id': randomUUID(), ...(body ? { 'content-type': 'application/json' } : {}), ...(a.headers ?? {}) });
    res.end(body);
    this.#notify();
  }

  async #authorize(req: IncomingMessage): Promise<readonly string[]> {
    const header = req.headers.authorization ?? '';
    const token = /^Bearer (\S+)$/.exec(header)?.[1];
    if (!token) throw new HttpError(401, 'InvalidAuthenticationToken', 'Access token is empty.');
    let check: TokenCheck;
    if (this.options.validateToken) check = await this.options.validateToken(token);
    else check = new Set(this.options.tokens ?? []).has(token) ? { ok: true } : { ok: false, reason: 'IDX14100: JWT is not well formed.' };
    if (!check.ok) throw new HttpError(401, 'InvalidAuthenticationToken', check.reason);
    return check.roles ?? ['Mail.Send', 'Mail.ReadWrite'];
  }

  #takeInjected(mailbox: string): void {
    const list = this.#injected.get(mailbox);
    const next = list?.[0];
    if (!next) return;
    if (next.after > 0) return void next.after--;
    if (--next.times <= 0) list.shift();
    throw new HttpError(next.status, next.code, next.message, next.retryAfterSeconds !== undefined ? { 'retry-after': String(next.retryAfterSeconds) } : {});
  }

  async #route(method: string, mailbox: string, rest: string, req: IncomingMessage, body: Buffer, roles: readonly string[], url: URL): Promise<Answer> {
    const need = (role: string) => {
      if (!roles.includes(role)) throw new HttpError(403, 'ErrorAccessDenied', 'Access is denied. Check credentials and try again.');
    };
    const contentType = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (method === 'GET' && (rest === '' || /^\/mailFolders\/[^/]+$/.test(rest))) {
      need(rest === '' ? 'User.Read.All' : 'Mail.ReadWrite');
      return { status: 200, json: rest === '' ? { mail: mailbox, userPrincipalName: mailbox } : { id: `folder-${url.pathname.split('/').pop()}` } };
    }
    if (method === 'POST' && rest === '/sendMail') {
      need('Mail.Send');
      if (contentType === 'text/plain') {
        const mime = decodeMime(body);
        this.#checkSendAs(mailbox);
        this.#deliver({ mailbox, via: 'mime', mime, ...(await parseMime(mime)), attachments: [], savedToSentItems: true });
      } else {
        const { message, saveToSentItems } = parseJson<{ message?: Record<string, unknown>; saveToSentItems?: boolean }>(body);
        if (!message) throw new HttpError(400, 'ErrorInvalidParameter', "The value of the parameter 'Message' is empty.");
        this.#checkSendAs(mailbox);
        const attachments = jsonAttachments(message, 'draft');
        this.#deliver({ mailbox, via: 'json', ...jsonRecipients(message), message: withoutBytes(message), attachments, savedToSentItems: saveToSentItems !== false });
      }
      return { status: 202 };
    }
    if (method === 'POST' && rest === '/messages') {
      need('Mail.ReadWrite');
      const id = `AAMk${randomUUID().replace(/-/g, '')}`;
      let draft: Draft;
      if (contentType === 'text/plain') {
        const mime = decodeMime(body);
        const parsed = await parseMime(mime);
        draft = { id, mailbox, message: {}, mime, parsed, attachments: [] };
      } else {
        const message = parseJson<Record<string, unknown>>(body);
        draft = { id, mailbox, message: withoutBytes(message), attachments: jsonAttachments(message, 'draft') };
      }
      this.drafts.set(id, draft);
      return { status: 201, json: { id, isDraft: true, subject: draft.parsed?.subject ?? draft.message.subject ?? '' } };
    }
    const dm = /^\/messages\/([^/]+)(\/.*)?$/.exec(rest);
    const draft = dm ? this.drafts.get(decodeURIComponent(dm[1]!)) : undefined;
    if (!dm || !draft || draft.mailbox !== mailbox) throw new HttpError(404, 'ErrorItemNotFound', 'The specified object was not found in the store.');
    const sub = dm[2] ?? '';
    if (method === 'PATCH' && sub === '') {
      need('Mail.ReadWrite');
      Object.assign(draft.message, parseJson<Record<string, unknown>>(body));
      return { status: 200, json: { id: draft.id } };
    }
    if (method === 'DELETE' && sub === '') {
      need('Mail.ReadWrite');
      this.drafts.delete(draft.id);
      return { status: 204 };
    }
    if (method === 'POST' && sub === '/attachments') {
      need('Mail.ReadWrite');
      const a = parseJson<Record<string, unknown>>(body);
      draft.attachments.push(...jsonAttachments({ attachments: [a] }, 'post'));
      return { status: 201, json: { id: randomUUID(), name: a.name } };
    }
    if (method === 'POST' && sub === '/attachments/createUploadSession') {
      need('Mail.ReadWrite');
      return this.#createSession(draft, parseJson<{ AttachmentItem?: Record<string, unknown> }>(body));
    }
    if (method === 'POST' && sub === '/send') {
      need('Mail.Send');
      this.#checkSendAs(mailbox);
      this.drafts.delete(draft.id);
      const savedToSentItems = !extendedProperties(draft.message).includes(DELETE_AFTER_SUBMIT);
      if (draft.mime) {
        this.#deliver({ mailbox, via: 'mime-draft', mime: draft.mime, ...draft.parsed!, attachments: [], savedToSentItems });
      } else {
        this.#deliver({ mailbox, via: 'draft', ...jsonRecipients(draft.message), message: draft.message, attachments: draft.attachments, savedToSentItems });
      }
      return { status: 202 };
    }
    throw new HttpError(400, 'BadRequest', `${method} ${rest} is not supported by the fake`);
  }

  #checkSendAs(mailbox: string): void {
    if (this.#sendAsDenied.has(mailbox)) {
      throw new HttpError(
        403,
        'ErrorSendAsDenied',
        'The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message.',
      );
    }
  }

  #createSession(draft: Draft, body: { AttachmentItem?: Record<string, unknown> }): Answer {
    const item = body.AttachmentItem;
    if (!item || item.attachmentType !== 'file' || typeof item.name !== 'string' || typeof item.size !== 'number') {
      throw new HttpError(400, 'ErrorInvalidParameter', 'AttachmentItem with attachmentType file, name and size is required.');
    }
    if (item.size < MIN_UPLOAD_SESSION) {
      throw new HttpError(400, 'ErrorAttachmentSizeShouldNotBeLessThanMinimumSize', 'Attachment size must be greater than the minimum size.');
    }
    if (item.size > MAX_UPLOAD_SESSION) throw new HttpError(400, 'ErrorAttachmentSizeShouldNotBeMoreThanMaximumSize', 'Attachment size exceeds 150 MB.');
    const session: UploadSession = {
      id: randomUUID(),
      authtoken: randomUUID(),
      draft,
      item: {
        name: item.name,
        size: item.size,
        contentType: typeof item.contentType === 'string' ? item.contentType : 'application/octet-stream',
        isInline: item.isInline === true,
        ...(typeof item.contentId === 'string' ? { contentId: item.contentId } : {}),
      },
      chunks: [],
      received: 0,
    };
    this.#sessions.set(session.id, session);
    return {
      status: 201,
      json: {
        uploadUrl: `${this.origin}/upload/${session.id}?authtoken=${session.authtoken}`,
        expirationDateTime: new Date(Date.now() + 15 * 60_000).toISOString(),
        nextExpectedRanges: ['0-'],
      },
    };
  }

  /** PUT of one range to an upload session: in order, exact lengths, no Authorization header. */
  async #upload(req: IncomingMessage, url: URL, body: Buffer): Promise<Answer> {
    const session = this.#sessions.get(url.pathname.slice('/upload/'.length));
    if (!session || url.searchParams.get('authtoken') !== session.authtoken) throw new HttpError(404, 'ErrorItemNotFound', 'The upload session was not found.');
    if (req.method === 'DELETE') return this.#sessions.delete(session.id), { status: 204 };
    if (req.method !== 'PUT') throw new HttpError(405, 'MethodNotAllowed', 'PUT or DELETE only.');
    if (req.headers.authorization !== undefined) throw new HttpError(400, 'InvalidRequest', 'The upload URL is pre-authenticated: do not send an Authorization header.');
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(String(req.headers['content-range'] ?? ''));
    if (!range) throw new HttpError(400, 'InvalidContentRange', 'Content-Range must read "bytes {start}-{end}/{total}".');
    const [start, end, total] = [Number(range[1]), Number(range[2]), Number(range[3])];
    if (total !== session.item.size || start !== session.received || end < start || end >= total || body.length !== end - start + 1) {
      throw new HttpError(416, 'InvalidRange', `Expected bytes ${session.received}-.../${session.item.size}, got ${start}-${end}/${total} with ${body.length} bytes.`);
    }
    session.chunks.push(body);
    session.received = end + 1;
    if (session.received < total) {
      return { status: 200, json: { expirationDateTime: new Date(Date.now() + 15 * 60_000).toISOString(), nextExpectedRanges: [`${session.received}`] } };
    }
    this.#sessions.delete(session.id);
    const id = randomUUID();
    session.draft.attachments.push({ ...session.item, content: Buffer.concat(session.chunks, total), via: 'upload' });
    return { status: 201, headers: { location: `${this.origin}/v1.0/Users('${session.draft.mailbox}')/Messages('${session.draft.id}')/Attachments('${id}')` } };
  }

  #deliver(d: Omit<GraphDelivery, 'recipients'>): void {
    this.deliveries.push({ ...d, recipients: [...d.to, ...d.cc, ...d.bcc] });
  }
}

interface Answer {
  status: number;
  headers?: Record<string, string>;
  json?: unknown;
}

export async function startGraphFake(options: GraphFakeOptions): Promise<GraphFake> {
  return new GraphFake(options).start();
}

async function readBody(req: IncomingMessage, limit: number): Promise<{ size: number; data?: Buffer }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= limit) chunks.push(chunk);
  }
  return size <= limit ? { size, data: Buffer.concat(chunks, size) } : { size };
}

function parseJson<T>(body: Buffer): T {
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch {
    throw new HttpError(400, 'BadRequest', 'Unable to read JSON request payload.');
  }
}

function decodeMime(body: Buffer): Buffer {
  const text = body.toString('latin1').replace(/\s+/g, '');
  if (text.length === 0 || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    throw new HttpError(400, 'ErrorMimeContentInvalidBase64String', 'Invalid base64 string for MIME content.');
  }
  return Buffer.from(text, 'base64');
}

async function parseMime(mime: Buffer): Promise<{ to: string[]; cc: string[]; bcc: string[]; from?: string; subject: string }> {
  const parsed = await simpleParser(mime, { skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true });
  const from = flatten(parsed.from)[0];
  return { to: flatten(parsed.to), cc: flatten(parsed.cc), bcc: flatten(parsed.bcc), ...(from ? { from } : {}), subject: parsed.subject ?? '' };
}

function flatten(value: AddressObject | AddressObject[] | undefined): string[] {
  const out: string[] = [];
  const visit = (list: { address?: string; group?: { address?: string }[] }[]) => {
    for (const e of list) {
      if (e.group) visit(e.group);
      else if (e.address) out.push(e.address.toLowerCase());
    }
  };
  for (const o of value === undefined ? [] : Array.isArray(value) ? value : [value]) visit(o.value);
  return out;
}

function jsonRecipients(message: Record<string, unknown>): { to: string[]; cc: string[]; bcc: string[]; from?: string; subject: string } {
  const list = (key: string) =>
    ((message[key] as { emailAddress?: { address?: string } }[] | undefined) ?? []).map((r) => String(r.emailAddress?.address ?? '').toLowerCase());
  const from = (message.from as { emailAddress?: { address?: string } } | undefined)?.emailAddress?.address;
  return { to: list('toRecipients'), cc: list('ccRecipients'), bcc: list('bccRecipients'), ...(from ? { from: from.toLowerCase() } : {}), subject: String(message.subject ?? '') };
}

function jsonAttachments(message: Record<string, unknown>, via: FakeAttachment['via']): FakeAttachment[] {
  const list = (message.attachments as Record<string, unknown>[] | undefined) ?? [];
  return list.map((a) => {
    if (a['@odata.type'] !== '#microsoft.graph.fileAttachment' || typeof a.contentBytes !== 'string' || typeof a.name !== 'string') {
      throw new HttpError(400, 'ErrorInvalidParameter', 'A fileAttachment needs @odata.type, name and contentBytes.');
    }
    return {
      name: a.name,
      contentType: typeof a.contentType === 'string' ? a.contentType : 'application/octet-stream',
      isInline: a.isInline === true,
      ...(typeof a.contentId === 'string' ? { contentId: a.contentId } : {}),
      content: Buffer.from(a.contentBytes, 'base64'),
      via,
    };
  });
}

function withoutBytes(message: Record<string, unknown>): Record<string, unknown> {
  const { attachments, ...rest } = message;
  void attachments;
  return rest;
}

function extendedProperties(message: Record<string, unknown>): string[] {
  const list = (message.singleValueExtendedProperties as { id?: string; value?: string }[] | undefined) ?? [];
  return list.filter((p) => String(p.value).toLowerCase() === 'true').map((p) => String(p.id).toLowerCase());
}
