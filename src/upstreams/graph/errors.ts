/**
 * What a Graph answer means for the mail, as data: one row per (HTTP status, Graph error code) with the SMTP
 * reply it becomes and the likely fix. A new Graph error is one row, not a new branch. The first matching
 * row wins. Graph errors read {"error": {"code", "message"}} (https://learn.microsoft.com/graph/errors).
 *
 * The broad rules follow STYLE.md: 429 and 5xx are temporary, other 4xx permanent. Two deliberate
 * exceptions defer instead of bouncing, because they describe our app registration, not the message (like
 * the smtp upstream's refused AUTH): 401 (token refused even after a fresh one) and 403 ErrorAccessDenied
 * (Mail.Send not consented, or the mailbox is outside the app's access policy / RBAC scope). They are
 * logged with the fix; a message they hold back bounces only when its queue lifetime ends.
 */
import { SmtpError } from '../../smtp-error.js';

/** A non-2xx answer from Graph (or the upload URL), as the client read it. */
export class GraphHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly graphMessage: string,
    /** From Retry-After, when the answer carried one. */
    readonly retryAfterMs?: number,
    /** Graph's request-id, for Microsoft support. */
    readonly requestId?: string,
  ) {
    super(`Graph ${status} ${code}: ${graphMessage}`);
    this.name = 'GraphHttpError';
  }
}

interface Rule {
  status: number | ((status: number) => boolean);
  /** Matched against error.code; absent matches any code. */
  code?: RegExp;
  reply: readonly [number, string];
  /** The likely fix, appended to the Graph text. */
  hint?: string;
  /** Honour Retry-After (429 and 503 per https://learn.microsoft.com/graph/throttling). */
  retryAfter?: boolean;
}

export const GRAPH_ERROR_RULES: readonly Rule[] = [
  { status: 429, reply: [451, '4.4.5'], hint: 'Graph is throttling this mailbox; retried after its Retry-After', retryAfter: true },
  { status: 503, reply: [451, '4.3.2'], hint: 'Graph is unavailable; retried after its Retry-After', retryAfter: true },
  { status: 401, reply: [451, '4.7.0'], hint: 'Graph refused the access token even after a fresh one: check the app registration (tenant, client ID, secret or certificate) and the Graph base URL' },
  {
    status: 403,
    code: /^ErrorSendAsDenied$/,
    reply: [550, '5.7.60'],
    hint: 'the mailbox may not send as the From address of this message: grant it Send As on that address (Add-RecipientPermission) or send from the mailbox itself',
  },
  {
    status: 403,
    code: /^(ErrorAccessDenied|AccessDenied|Authorization_RequestDenied)$/,
    reply: [451, '4.7.0'],
    hint: 'the app may not use this mailbox: grant the application permission Mail.Send (and Mail.ReadWrite for large messages) with admin consent, and include the mailbox in its application access policy or RBAC for Applications scope',
  },
  { status: 413, reply: [552, '5.3.4'], hint: 'a request exceeded the Graph limit of 4 MB' },
  { status: 404, code: /^ErrorItemNotFound$/, reply: [451, '4.3.0'], hint: 'the draft disappeared while it was being built; retried' },
  { status: 404, code: /^(ErrorInvalidUser|ResourceNotFound|MailboxNotEnabledForRESTAPI|Request_ResourceNotFound)$/, reply: [550, '5.1.8'], hint: 'the sending mailbox does not exist in Exchange Online' },
  { status: 400, code: /^ErrorInvalidRecipients$/, reply: [550, '5.1.3'] },
  { status: (s) => s >= 500, reply: [451, '4.3.0'], retryAfter: true },
  { status: 400, reply: [554, '5.6.0'] },
  { status: (s) => s >= 400 && s < 500, reply: [550, '5.0.0'] },
];

/** The SMTP meaning of a Graph answer (any non-2xx status). */
export function classifyGraphAnswer(err: GraphHttpError): SmtpError {
  const rule = GRAPH_ERROR_RULES.find((r) => (typeof r.status === 'number' ? r.status === err.status : r.status(err.status)) && (!r.code || r.code.test(err.code)));
  const [code, enhanced] = rule?.reply ?? [451, '4.3.0'];
  const text = `Graph ${err.status} ${err.code}: ${err.graphMessage}${rule?.hint ? ` (${rule.hint})` : ''}${err.requestId ? ` [request-id ${err.requestId}]` : ''}`;
  const retryAfterMs = rule?.retryAfter ? err.retryAfterMs : undefined;
  return new SmtpError(code, enhanced, text, { cause: err, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
}

/**
 * Anything thrown while delivering through Graph: its answers by the table above, our own SmtpErrors as they
 * are (token failures are 4.7.0 already), timeouts and network failures as temporary.
 */
export function classifyGraphError(err: unknown): SmtpError {
  if (err instanceof SmtpError) return err;
  if (err instanceof GraphHttpError) return classifyGraphAnswer(err);
  const e = err as { name?: unknown; message?: unknown; code?: unknown; cause?: { code?: unknown; message?: unknown } } | null;
  if (e?.name === 'TimeoutError') return new SmtpError(451, '4.4.2', `Graph did not answer in time: ${String(e.message)}`, { cause: err });
  const coded = typeof e?.code === 'string' ? e : typeof e?.cause?.code === 'string' ? e.cause : undefined;
  const detail = coded ? `${String(coded.code)}: ${String(coded.message ?? '')}` : String(e?.message ?? err);
  return new SmtpError(451, '4.4.1', `cannot reach Graph: ${detail}`.trim(), { cause: err });
}

/** Retry-After is delay-seconds or an HTTP-date (RFC 9110 section 10.2.3); anything else is ignored. */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
