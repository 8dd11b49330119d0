/**
 * A local Mailjet Send API v3.1 (POST /v3.1/send) for tests, following Mailjet's documentation:
 *   - https://dev.mailjet.com/email/guides/send-api-v31/ : request shape (Messages[], SandboxMode), per-message
 *     answers in request order ({Status, CustomID, To/Cc/Bcc: [{Email, MessageUUID, MessageID, MessageHref}]} or
 *     {Status: "error", Errors: [{ErrorIdentifier, ErrorCode, StatusCode, ErrorMessage, ErrorRelatedTo}]}), the
 *     error table (mj-0001 suspended key, mj-0003 missing property, mj-0006 too long, mj-0007 empty list, mj-0008
 *     too many items, mj-0012 empty value, mj-0013 invalid address, mj-0015 bad credentials, send-0003 no
 *     content, send-0011 forbidden header, send-0015 too many recipients), the list of forbidden headers,
 *     "attachments should not exceed 15 MB", sandbox answers without MessageUUID/MessageID;
 *   - https://dev.mailjet.com/email/reference/send-emails/ : at most 50 messages per call, Basic auth with the
 *     API key and secret key;
 *   - https://dev.mailjet.com/docs/email-api/email_api_overview/status_codes : 401 for bad keys, 429 for too
 *     many calls.
 * Where the docs say nothing the fake is stricter and says so: an unknown message property is refused
 * ("fake-unknown-property"), attachments over 15 MB answer mj-0011 (payload over the limit), and a call with
 * any refused message answers HTTP 400.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

const KNOWN_PROPERTIES = new Set([
  'From', 'Sender', 'To', 'Cc', 'Bcc', 'ReplyTo', 'Subject', 'TextPart', 'HTMLPart', 'Attachments', 'InlinedAttachments', 'Headers',
  'CustomID', 'EventPayload', 'CustomCampaign', 'DeduplicateCampaign', 'TrackOpens', 'TrackClicks', 'TemplateID', 'TemplateLanguage',
  'Variables', 'URLTags', 'Priority', 'MonitoringCategory', 'TemplateErrorReporting', 'TemplateErrorDeliver',
]);

/** "List of forbidden headers" of the Send API v3.1 guide (lower-cased). */
export const FORBIDDEN_HEADERS = new Set(
  [
    'From', 'Sender', 'Subject', 'To', 'Cc', 'Bcc', 'Return-Path', 'Delivered-To', 'DKIM-Signature', 'DomainKey-Status', 'Received-SPF',
    'Authentication-Results', 'Received', 'X-Mailjet-Prio', 'X-Mailjet-Debug', 'User-Agent', 'X-Mailer', 'X-MJ-CustomID', 'X-MJ-EventPayload',
    'X-MJ-Vars', 'X-MJ-TemplateErrorDeliver', 'X-MJ-TemplateErrorReporting', 'X-MJ-TemplateLanguage', 'X-Mailjet-TrackOpen',
    'X-Mailjet-TrackClick', 'X-MJ-TemplateID', 'X-MJ-WorkflowID', 'X-Feedback-Id', 'X-Mailjet-Segmentation', 'List-Id', 'X-MJ-MID',
    'X-MJ-ErrorMessage', 'Date', 'X-CSA-Complaints', 'Message-Id', 'X-Mailjet-Campaign', 'X-MJ-StatisticsContactsListID',
    // have a property of their own (send-0011: "headers that have a property alternative")
    'Reply-To',
  ].map((h) => h.toLowerCase()),
);

const EMAIL = /^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$/;
const MAX_ATTACHMENT_BYTES = 15_000_000;

export interface FakeError {
  ErrorIdentifier: string;
  ErrorCode: string;
  StatusCode: number;
  ErrorMessage: string;
  ErrorRelatedTo?: string[];
}

export interface FakeCall {
  /** Basic auth user (API key) as sent, or undefined. */
  apiKey?: string;
  status: number;
  sandbox: boolean;
  /** The Messages of the request as parsed (empty when the body was not JSON). */
  messages: Record<string, unknown>[];
}

/** A message the fake accepted (Status success, not in sandbox mode): what Mailjet would have sent. */
export interface AcceptedMessage {
  message: Record<string, unknown>;
  uuid: string;
  call: number;
}

export interface MailjetFake {
  baseUrl: string;
  apiKey: string;
  secretKey: string;
  calls: FakeCall[];
  accepted: AcceptedMessage[];
  /** mj-0001: every call answers 401 "API key is suspended" while true. */
  suspended: boolean;
  /** The next `count` calls answer `status` (e.g. 429 or 503) with these headers, before any validation. */
  failNext(count: number, status: number, headers?: Record<string, string>): void;
  /** Any message with this recipient fails with this error, related to that recipient's slot. */
  refuseRecipient(email: string, error: { code: string; status?: number; message: string }): void;
  waitForAccepted(n: number, timeoutMs?: number): Promise<AcceptedMessage[]>;
  close(): Promise<void>;
}

export async function startMailjetFake(credentials: { apiKey: string; secretKey: string } = { apiKey: 'mj-public', secretKey: 'mj-secret' }): Promise<MailjetFake> {
  const scripted: { status: number; headers: Record<string, string> }[] = [];
  const refused = new Map<string, { code: string; status?: number; message: string }>();
  const waiters = new Set<() => void>();
  let nextId = 1_000_000;

  const fake: MailjetFake = {
    baseUrl: '',
    ...credentials,
    calls: [],
    accepted: [],
    suspended: false,
    failNext(count, status, headers = {}) {
      for (let i = 0; i < count; i++) scripted.push({ status, headers });
    },
    refuseRecipient(email, error) {
      refused.set(email.toLowerCase(), error);
    },
    waitForAccepted(n, timeoutMs = 10_000) {
      if (fake.accepted.length >= n) return Promise.resolve(fake.accepted.slice());
      return new Promise((resolve, reject) => {
        const check = () => {
          if (fake.accepted.length >= n) (cleanup(), resolve(fake.accepted.slice()));
        };
        const timer = setTimeout(() => (cleanup(), reject(new Error(`mailjet fake: ${fake.accepted.length} of ${n} messages accepted after ${timeoutMs} ms; calls: ${JSON.stringify(fake.calls.map((c) => c.status))}`))), timeoutMs);
        const cleanup = () => (clearTimeout(timer), waiters.delete(check));
        waiters.add(check);
      });
    },
    close: () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))),
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')));
  });

  function handle(req: IncomingMessage, res: ServerResponse, text: string): void {
    const call: FakeCall = { status: 0, sandbox: false, messages: [] };
    fake.calls.push(call);
    const answer = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      call.status = status;
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
      for (const w of [...waiters]) w();
    };
    if (req.method !== 'POST' || req.url !== '/v3.1/send') return answer(404, { ErrorMessage: 'Not found', StatusCode: 404 });
    const auth = /^Basic (.+)$/i.exec(req.headers.authorization ?? '');
    const [user, pass] = auth ? Buffer.from(auth[1]!, 'base64').toString('utf8').split(/:(.*)/s) : [];
    if (user !== undefined) call.apiKey = user;
    const script = scripted.shift();
    if (script) return answer(script.status, { ErrorMessage: `scripted ${script.status}`, StatusCode: script.status }, script.headers);
    if (user !== fake.apiKey || pass !== fake.secretKey) {
      return answer(401, globalError('mj-0015', 401, 'API key authentication/authorization failure. You may be unauthorized to access the API or your API key may be expired.'));
    }
    if (fake.suspended) return answer(401, globalError('mj-0001', 401, 'API key is suspended.'));
    let body: { Messages?: unknown; SandboxMode?: unknown };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      return answer(400, globalError('mj-0002', 400, 'Malformed JSON, please review the syntax and properties types.'));
    }
    if (!Array.isArray(body.Messages) || body.Messages.length === 0) return answer(400, globalError('mj-0007', 400, 'Messages must not be empty.'));
    if (body.Messages.length > 50) return answer(400, globalError('mj-0008', 400, 'Messages has more than 50 items.'));
    call.sandbox = body.SandboxMode === true;
    call.messages = body.Messages as Record<string, unknown>[];
    const results = call.messages.map((m) => {
      const errors = validate(m);
      if (errors.length > 0) return { Status: 'error', Errors: errors };
      return success(m, call.sandbox);
    });
    answer(results.some((r) => r.Status === 'error') ? 400 : 200, { Messages: results });
  }

  function success(m: Record<string, unknown>, sandbox: boolean) {
    const uuid = sandbox ? '' : randomUUID();
    const entry = (r: { Email: string }) => {
      const id = sandbox ? 0 : nextId++;
      return { Email: r.Email, MessageUUID: sandbox ? '' : randomUUID(), MessageID: id, MessageHref: `https://api.mailjet.com/v3/REST/message/${id}` };
    };
    if (!sandbox) fake.accepted.push({ message: m, uuid, call: fake.calls.length - 1 });
    const list = (field: string) => ((m[field] as { Email: string }[] | undefined) ?? []).map(entry);
    return { Status: 'success', CustomID: typeof m.CustomID === 'string' ? m.CustomID : '', To: list('To'), Cc: list('Cc'), Bcc: list('Bcc') };
  }

  function validate(m: Record<string, unknown>): FakeError[] {
    const errors: FakeError[] = [];
    const err = (code: string, message: string, related: string[], status = 400) => errors.push({ ...globalError(code, status, message), ErrorRelatedTo: related });
    if (!m || typeof m !== 'object') return [{ ...globalError('mj-0004', 400, 'Type mismatch. Expected type "object".') }];
    for (const key of Object.keys(m)) if (!KNOWN_PROPERTIES.has(key)) err('fake-unknown-property', `Unknown property "${key}" (the fake refuses it).`, [key]);
    const address = (value: unknown, path: string, required: boolean) => {
      if (value === undefined) return required ? err('mj-0003', `The ${path} is mandatory but missing from the input`, [path]) : undefined;
      const a = value as { Email?: unknown; Name?: unknown };
      if (typeof a !== 'object' || a === null || typeof a.Email !== 'string') return err('mj-0004', 'Type mismatch. Expected type "email".', [path]);
      if (!EMAIL.test(a.Email)) return err('mj-0013', `"${a.Email}" is an invalid email address.`, [`${path}.Email`]);
      if (a.Name !== undefined && typeof a.Name !== 'string') err('mj-0004', 'Type mismatch. Expected type "string".', [`${path}.Name`]);
    };
    address(m.From, 'From', true);
    address(m.Sender, 'Sender', false);
    address(m.ReplyTo, 'ReplyTo', false);
    let recipients = 0;
    for (const field of ['To', 'Cc', 'Bcc']) {
      const list = m[field];
      if (list === undefined) {
        if (field === 'To') err('mj-0003', 'The To is mandatory but missing from the input', ['To']);
        continue;
      }
      if (!Array.isArray(list)) {
        err('mj-0004', 'Type mismatch. Expected type "array of emails".', [field]);
        continue;
      }
      if (field === 'To' && list.length === 0) err('mj-0007', 'To must not be empty.', ['To']);
      list.forEach((r, i) => {
        address(r, `${field}[${i}]`, true);
        const refusal = refused.get(String((r as { Email?: unknown }).Email).toLowerCase());
        if (refusal) err(refusal.code, refusal.message, [`${field}[${i}].Email`], refusal.status ?? 400);
      });
      recipients += list.length;
    }
    if (recipients > 50) err('send-0015', 'Total number of recipients is over the limit of 50.', ['To', 'Cc', 'Bcc']);
    if (m.Subject !== undefined && (typeof m.Subject !== 'string' || m.Subject.length > 255)) err('mj-0006', 'Subject is over 255 characters.', ['Subject']);
    for (const part of ['TextPart', 'HTMLPart', 'CustomID', 'EventPayload']) {
      if (m[part] !== undefined && typeof m[part] !== 'string') err('mj-0004', 'Type mismatch. Expected type "string".', [part]);
    }
    if (m.TextPart === undefined && m.HTMLPart === undefined && m.TemplateID === undefined) {
      err('send-0003', 'At least "HTMLPart", "TextPart" or "TemplateID" must be provided.', ['HTMLPart', 'TextPart']);
    }
    let bytes = 0;
    for (const field of ['Attachments', 'InlinedAttachments']) {
      const list = m[field];
      if (list === undefined) continue;
      if (!Array.isArray(list)) {
        err('mj-0004', 'Type mismatch. Expected type "array".', [field]);
        continue;
      }
      if (list.length > 50) err('mj-0008', `${field} has more than 50 items.`, [field]);
      list.forEach((a: Record<string, unknown>, i) => {
        for (const key of ['ContentType', 'Filename', 'Base64Content', ...(field === 'InlinedAttachments' ? ['ContentID'] : [])]) {
          if (typeof a[key] !== 'string' || a[key] === '') err('mj-0012', `${key} must not be empty.`, [`${field}[${i}].${key}`]);
        }
        if (typeof a.Base64Content === 'string') bytes += Buffer.from(a.Base64Content, 'base64').length;
      });
    }
    if (bytes > MAX_ATTACHMENT_BYTES) err('mj-0011', 'Attachments exceed 15 MB.', ['Attachments']);
    if (m.Headers !== undefined) {
      const headers = m.Headers as Record<string, unknown>;
      if (typeof headers !== 'object' || headers === null) err('mj-0004', 'Type mismatch. Expected type "object".', ['Headers']);
      else {
        if (Object.keys(headers).length > 50) err('mj-0008', 'Headers has more than 50 items.', ['Headers']);
        for (const [name, value] of Object.entries(headers)) {
          if (FORBIDDEN_HEADERS.has(name.toLowerCase())) err('send-0011', `Header "${name}" can not be set through Headers; use the dedicated property.`, [`Headers["${name}"]`]);
          if (typeof value !== 'string') err('mj-0004', 'Type mismatch. Expected type "string".', [`Headers["${name}"]`]);
        }
      }
    }
    return errors;
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return fake;
}

function globalError(code: string, status: number, message: string): FakeError {
  return { ErrorIdentifier: randomUUID(), ErrorCode: code, StatusCode: status, ErrorMessage: message };
}
