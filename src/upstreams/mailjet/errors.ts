/**
 * What Mailjet's Send API v3.1 answers mean for the queue, kept as data: a new error code is one row.
 *
 * Source: "Send API errors" in https://dev.mailjet.com/email/guides/send-api-v31/#send-api-errors (each error
 * has ErrorIdentifier, ErrorCode, StatusCode, ErrorMessage, ErrorRelatedTo) and the HTTP status codes in
 * https://dev.mailjet.com/docs/email-api/email_api_overview/status_codes. As everywhere in smarthost: 429 and
 * 5xx are temporary, other 4xx permanent, an error we cannot read is temporary.
 */
import { SmtpError } from '../../smtp-error.js';

export interface MailjetError {
  ErrorIdentifier?: string;
  ErrorCode?: string;
  StatusCode?: number;
  ErrorMessage?: string;
  ErrorRelatedTo?: string[];
}

export interface ErrorRule {
  /** The reply the recipient's record and the DSN get. */
  code: number;
  enhanced: string;
  /** Our explanation, put before Mailjet's own ErrorMessage. */
  explanation: string;
  /** A fault of this account or of smarthost, not of the message: log an error so an operator looks. */
  alert?: true;
}

/** ErrorCode → what it means here. Codes from the Send API v3.1 error table. */
export const ERROR_TABLE: Readonly<Record<string, ErrorRule>> = {
  // Account and credentials: deferred, never bounced, and alerted: the fix is an operator's.
  'mj-0001': { code: 451, enhanced: '4.7.0', explanation: 'Mailjet API key is suspended', alert: true },
  'mj-0015': { code: 451, enhanced: '4.7.0', explanation: 'Mailjet refused the API key and secret key', alert: true },
  'send-0006': { code: 451, enhanced: '4.7.0', explanation: 'Mailjet API key may not set a Sender header', alert: true },
  'send-0007': { code: 451, enhanced: '4.7.0', explanation: 'Mailjet sender ID is not validated', alert: true },
  // The From address is not a validated sender of the account: the message's sender is refused.
  'send-0008': { code: 550, enhanced: '5.7.1', explanation: 'sender address is not authorized in this Mailjet account', alert: true },
  // A payload smarthost built wrongly: deferred until fixed, and alerted.
  'mj-0002': { code: 451, enhanced: '4.3.0', explanation: 'Mailjet could not read the request (smarthost bug?)', alert: true },
  'send-0011': { code: 451, enhanced: '4.3.0', explanation: 'Mailjet refused a header smarthost passed (smarthost bug?)', alert: true },
  // The message's content: bounced with Mailjet's text.
  'send-0003': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: it has no text or HTML part' },
  'send-0004': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message content' },
  'send-0010': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message template' },
  'send-0012': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the campaign settings' },
  'send-0015': { code: 550, enhanced: '5.5.3', explanation: 'Mailjet refused the message: too many recipients' },
  'send-0016': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the template settings' },
  'mj-0003': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a mandatory property is missing' },
  'mj-0004': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a property has the wrong type' },
  'mj-0005': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a property value is not allowed' },
  'mj-0006': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a property is too long' },
  'mj-0007': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a list is empty' },
  'mj-0008': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a list has too many items' },
  'mj-0011': { code: 552, enhanced: '5.3.4', explanation: 'Mailjet refused the message: it is too big' },
  'mj-0012': { code: 550, enhanced: '5.6.0', explanation: 'Mailjet refused the message: a value is empty' },
  'mj-0013': { code: 550, enhanced: '5.1.3', explanation: 'Mailjet refused an address as invalid' },
};

/** A recipient-specific ErrorRelatedTo, e.g. "To[0].Email" or "Bcc[3]". */
const RECIPIENT_RELATED = /^(To|Cc|Bcc)\[(\d+)\]/;

export function relatedRecipient(related: string): { field: 'To' | 'Cc' | 'Bcc'; index: number } | undefined {
  const m = RECIPIENT_RELATED.exec(related);
  return m ? { field: m[1] as 'To' | 'Cc' | 'Bcc', index: Number(m[2]) } : undefined;
}

/** One Mailjet error as an SmtpError, plus whether it needs an operator. */
export function classifyMailjetError(error: MailjetError, options: { retryAfterMs?: number } = {}): { error: SmtpError; alert: boolean } {
  const code = typeof error.ErrorCode === 'string' ? error.ErrorCode : undefined;
  const text = describe(error);
  let rule = code !== undefined && Object.hasOwn(ERROR_TABLE, code) ? ERROR_TABLE[code] : undefined;
  // An invalid From address is the sender's problem (5.1.7), not a recipient's (5.1.3).
  if (rule && code === 'mj-0013' && error.ErrorRelatedTo?.some((r) => /^(From|Sender|ReplyTo)\b/.test(r))) {
    rule = { code: 550, enhanced: '5.1.7', explanation: 'Mailjet refused the sender address as invalid' };
  }
  if (rule) return { error: new SmtpError(rule.code, rule.enhanced, `${rule.explanation}: ${text}`, { cause: error }), alert: rule.alert === true };
  return { ...byHttpStatus(typeof error.StatusCode === 'number' ? error.StatusCode : 0, text, error, options), alert: error.StatusCode === 401 || error.StatusCode === 403 };
}

/**
 * An HTTP answer without a per-message result (or an error code the table does not know): 429 and 5xx defer,
 * 401/403 defer too (credentials are never the message's fault), other 4xx bounce; anything else defers.
 */
export function byHttpStatus(status: number, text: string, cause?: unknown, options: { retryAfterMs?: number } = {}): { error: SmtpError } {
  const retry = options.retryAfterMs !== undefined ? { retryAfterMs: options.retryAfterMs } : {};
  if (status === 429) return { error: new SmtpError(451, '4.7.0', `Mailjet rate limit reached (HTTP 429): ${text}`, { cause, ...retry }) };
  if (status >= 500 && status <= 599) return { error: new SmtpError(451, '4.3.0', `Mailjet is unavailable (HTTP ${status}): ${text}`, { cause, ...retry }) };
  if (status === 401 || status === 403) return { error: new SmtpError(451, '4.7.0', `Mailjet refused our credentials (HTTP ${status}): ${text}`, { cause }) };
  if (status >= 400 && status <= 499) return { error: new SmtpError(550, '5.6.0', `Mailjet refused the message (HTTP ${status}): ${text}`, { cause }) };
  return { error: new SmtpError(451, '4.3.0', `unexpected answer from Mailjet (HTTP ${status || 'none'}): ${text}`, { cause }) };
}

/** "mj-0013 "x" is an invalid email address. (To[0].Email)": Mailjet's own words, on one line. */
function describe(error: MailjetError): string {
  const message = typeof error.ErrorMessage === 'string' && error.ErrorMessage !== '' ? error.ErrorMessage : 'no error message';
  const related = Array.isArray(error.ErrorRelatedTo) && error.ErrorRelatedTo.length > 0 ? ` (${error.ErrorRelatedTo.join(', ')})` : '';
  const code = typeof error.ErrorCode === 'string' ? `${error.ErrorCode} ` : '';
  return `${code}${message}${related}`.replace(/\s+/g, ' ').trim().slice(0, 400);
}

/** Retry-After as delta-seconds or an HTTP date (RFC 9110 §10.2.3); undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
