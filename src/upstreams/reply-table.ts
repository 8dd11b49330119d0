/**
 * A provider's SMTP replies as data (pattern, action, explanation), applied in one place: a new provider
 * error is one row in that provider's table (m365/exchange-replies.ts, google/gmail-replies.ts), not a new
 * branch in its upstream.
 */
import { SmtpError } from '../smtp-error.js';

/**
 * defer: retried later, never bounced (the cause passes by itself: throttling, quotas);
 * alert: retried later too, and logged as an error naming the cause and what to do (a setting only an admin
 * can change, or mail held back for hours that someone must know about);
 * bounce: failed permanently, the explanation goes into the DSN.
 */
export type ReplyAction = 'defer' | 'alert' | 'bounce';

export interface ReplyRow {
  /** Matched against the reply as "code enhanced text", e.g. "535 5.7.3 Authentication unsuccessful". */
  pattern: RegExp;
  action: ReplyAction;
  /** What happened and what to do, for the log and the DSN. */
  explanation: string;
}

export interface ClassifiedReply<Row extends ReplyRow = ReplyRow> {
  error: SmtpError;
  /** Set for alert rows: the line to log as an error. */
  alert?: string;
  row?: Row;
}

/**
 * The first row that matches `error`, applied: defer and alert become temporary (4xx), bounce stays permanent.
 * `provider` names who gave the reply in a deferred error's text ("Exchange said: ...").
 */
export function classifyReply<Row extends ReplyRow>(error: SmtpError, rows: readonly Row[], provider: string): ClassifiedReply<Row> {
  const row = rows.find((r) => r.pattern.test(error.reply));
  if (!row) return { error };
  if (row.action === 'bounce') {
    const code = error.temporary ? 550 : error.code;
    const enhanced = error.temporary ? `5${error.enhanced.slice(1)}` : error.enhanced;
    return { error: new SmtpError(code, enhanced, `${error.message} (${row.explanation})`, { cause: error }), row };
  }
  const code = error.temporary ? error.code : 451;
  const enhanced = error.temporary ? error.enhanced : `4${error.enhanced.slice(1)}`;
  const deferred = new SmtpError(code, enhanced, `${row.explanation}; ${provider} said: ${error.reply}`, { cause: error });
  return { error: deferred, row, ...(row.action === 'alert' ? { alert: row.explanation } : {}) };
}
