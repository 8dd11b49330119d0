/**
 * One Send API v3.1 call: POST {baseUrl}/v3.1/send with HTTP Basic auth (API key : secret key) and
 * {"Messages": [...], "SandboxMode": true?}, answered with one result per message, in request order
 * ("The messages' order is preserved from the user input", https://dev.mailjet.com/email/guides/send-api-v31/).
 * Every HTTP outcome is turned into data here: per-message results, or one error for the whole call.
 */
import type { Secret } from '../../config/secret.js';
import { SmtpError } from '../../smtp-error.js';
import { byHttpStatus, classifyMailjetError, parseRetryAfter, type MailjetError } from './errors.js';
import type { MjMessage } from './mapping.js';

export interface MjResultRecipient {
  Email?: string;
  MessageUUID?: string;
  MessageID?: number;
  MessageHref?: string;
}

export interface MjResult {
  Status?: string;
  CustomID?: string;
  To?: MjResultRecipient[];
  Cc?: MjResultRecipient[];
  Bcc?: MjResultRecipient[];
  Errors?: MailjetError[];
}

/** Per-message results, or the one error every message of the call shares (alert: an operator should look). */
export type CallAnswer = { results: MjResult[] } | { error: SmtpError; alert: boolean };

export interface SendApiSettings {
  baseUrl: string;
  apiKey: string;
  secretKey: Secret;
  sandboxMode: boolean;
  timeout: number;
}

/** `stop`: aborted when the daemon stops, so a hanging call does not hold the shutdown up. */
export async function postSend(settings: SendApiSettings, messages: MjMessage[], o: { fetch?: typeof fetch; stop?: AbortSignal } = {}): Promise<CallAnswer> {
  const fetchImpl = o.fetch ?? fetch;
  const url = `${settings.baseUrl}/v3.1/send`;
  let body: string;
  try {
    body = JSON.stringify({ Messages: messages, ...(settings.sandboxMode ? { SandboxMode: true } : {}) });
  } catch (err) {
    // A body longer than V8's longest string (RangeError: Invalid string length). A call is that large only
    // when one message alone is (mailjet.ts keeps the rest under batch.maxBytes): it fails so every time.
    return { error: new SmtpError(552, '5.3.4', `message too large for a Send API request: ${String((err as Error).message)}`, { cause: err }), alert: false };
  }
  let response: Response;
  let text: string;
  try {
    response = await fetchImpl(url, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${settings.apiKey}:${settings.secretKey.reveal()}`).toString('base64')}`,
        'content-type': 'application/json',
        accept: 'application/json',
      },
      body,
      signal: o.stop ? AbortSignal.any([AbortSignal.timeout(settings.timeout), o.stop]) : AbortSignal.timeout(settings.timeout),
    });
    text = await response.text();
  } catch (err) {
    return { error: unreachable(err, settings), alert: false };
  }
  const json = parseJson(text);
  const status = response.status;
  const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
  const perMessage = (json as { Messages?: unknown } | undefined)?.Messages;
  // A 429 or 5xx is about the call, whatever its body says.
  if (status !== 429 && status < 500 && Array.isArray(perMessage)) {
    if (perMessage.length === messages.length) return { results: perMessage as MjResult[] };
    return { error: new SmtpError(451, '4.3.0', `Mailjet answered ${perMessage.length} results for ${messages.length} messages (HTTP ${status})`), alert: true };
  }
  const global = json as MailjetError | undefined;
  if (status !== 429 && status < 500 && typeof global?.ErrorCode === 'string') {
    return classifyMailjetError({ ...global, StatusCode: global.StatusCode ?? status });
  }
  if (status >= 200 && status <= 299) return { error: new SmtpError(451, '4.3.0', `Mailjet answered HTTP ${status} without per-message results`), alert: true };
  const detail = typeof global?.ErrorMessage === 'string' ? global.ErrorMessage : snippet(text);
  const { error } = byHttpStatus(status, detail, undefined, retryAfterMs !== undefined ? { retryAfterMs } : {});
  return { error, alert: status === 401 || status === 403 };
}

function unreachable(err: unknown, settings: SendApiSettings): SmtpError {
  const e = err as { name?: unknown; message?: unknown; cause?: { code?: unknown; message?: unknown } };
  if (e?.name === 'TimeoutError') {
    return new SmtpError(451, '4.4.2', `Mailjet did not answer within ${settings.timeout} ms (the message may have been sent)`, { cause: err });
  }
  if (e?.name === 'AbortError') {
    return new SmtpError(451, '4.4.2', 'the Send API call was cut short because smarthost is stopping (the message may have been sent)', { cause: err });
  }
  const code = typeof e?.cause?.code === 'string' ? `${e.cause.code}: ` : '';
  const message = typeof e?.cause?.message === 'string' ? e.cause.message : String(e?.message ?? err);
  return new SmtpError(451, '4.4.1', `cannot reach Mailjet at ${new URL(settings.baseUrl).host}: ${code}${message}`, { cause: err });
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function snippet(text: string): string {
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine === '' ? 'empty body' : oneLine.slice(0, 200);
}
