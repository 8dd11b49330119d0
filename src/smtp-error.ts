/**
 * The one error type that carries SMTP meaning through the pipeline: from an upstream's reply, through
 * the queue's retry-or-bounce decision, to the reply an SMTP client sees. Whether an error is temporary
 * is derived from its code, never stored beside it, so the two cannot disagree.
 */
export class SmtpError extends Error {
  /** Basic reply code, e.g. 451 or 550. */
  readonly code: number;
  /** Enhanced status code (RFC 3463), e.g. "4.3.0". */
  readonly enhanced: string;
  /**
   * For a temporary error: the upstream asked to be retried after this long (HTTP Retry-After on a 429 or
   * 503). The queue waits at least this long instead of its own backoff.
   */
  declare readonly retryAfterMs?: number;

  constructor(code: number, enhanced: string, message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(message, options);
    this.name = 'SmtpError';
    this.code = code;
    this.enhanced = enhanced;
    if (options?.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
  }

  get temporary(): boolean {
    return this.code < 500;
  }

  /** "451 4.3.0 text": how the error reads in a log line or a DSN's Diagnostic-Code. */
  get reply(): string {
    return `${this.code} ${this.enhanced} ${this.message}`;
  }

  /** Shape smtp-server turns into the client's reply. */
  forSmtpServer(): Error & { responseCode: number } {
    const err = new Error(`${this.enhanced} ${this.message}`) as Error & { responseCode: number };
    err.responseCode = this.code;
    return err;
  }
}

const REPLY = /^([245]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})\s+)?([\s\S]*)$/;

/**
 * Classifies anything thrown during delivery. An error we cannot read counts as temporary, so the
 * message is deferred rather than bounced: an unknown failure must never lose mail.
 */
export function toSmtpError(err: unknown): SmtpError {
  if (err instanceof SmtpError) return err;
  const e = (err ?? {}) as { responseCode?: unknown; response?: unknown; message?: unknown; code?: unknown };
  const text = typeof e.message === 'string' ? e.message : String(err);
  if (typeof e.responseCode === 'number' && e.responseCode >= 200 && e.responseCode < 600) {
    const parsed = typeof e.response === 'string' ? parseReply(e.response) : undefined;
    const code = e.responseCode;
    return new SmtpError(code, parsed?.enhanced ?? defaultEnhanced(code), parsed?.text ?? text, { cause: err });
  }
  const netCode = typeof e.code === 'string' ? `${e.code}: ` : '';
  return new SmtpError(451, '4.4.1', `${netCode}${text}`.trim(), { cause: err });
}

/** Parses the last line of an SMTP reply ("550-5.1.1 ..." / "550 5.1.1 ..."). */
export function parseReply(response: string): { code: number; enhanced?: string; text: string } | undefined {
  const lines = response.trim().split(/\r?\n/);
  const m = REPLY.exec(lines[lines.length - 1] ?? '');
  if (!m) return undefined;
  const text = lines.map((l) => l.replace(/^[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s+)?/, '')).join(' ');
  return { code: Number(m[1]), enhanced: m[2], text };
}

export function defaultEnhanced(code: number): string {
  return `${Math.floor(code / 100)}.0.0`;
}
