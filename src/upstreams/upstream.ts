import type { Readable } from 'node:stream';
import type { SmtpError } from '../smtp-error.js';

/** One delivery: a spooled message, sent to exactly these recipients through one upstream. */
export interface DeliveryRequest {
  queueId: string;
  /** Envelope sender; '' is the null sender of a bounce. */
  sender: string;
  recipients: readonly string[];
  size: number;
  /** Some byte of the message is above 127 (RFC 6152): SMTP upstreams declare BODY=8BITMIME where offered. */
  eightBit?: boolean;
  /** Sent with SMTPUTF8 and UTF-8 in its header fields (RFC 6532): only an SMTP upstream offering SMTPUTF8 may take it. */
  utf8Headers?: boolean;
  /**
   * Opens the spooled message (CRLF line endings, as accepted). Each call returns a fresh stream, read
   * `chunkSize` bytes at a time (default 64 KiB).
   */
  openMessage(options?: { chunkSize?: number }): Readable;
}

export type RecipientOutcome =
  | { recipient: string; delivered: true; reply: string }
  | { recipient: string; delivered: false; error: SmtpError };

/**
 * Every transport sits behind this. deliver() answers one outcome per requested recipient; it may also
 * throw, which counts as the same error for every recipient (e.g. connection refused).
 */
export interface Upstream {
  readonly name: string;
  deliver(request: DeliveryRequest): Promise<RecipientOutcome[]>;
  /**
   * Whom the provider counts mail from `sender` against: the mailbox that logs in (a fixed mailbox, however
   * many senders it carries) or the sender itself (mailbox: fromSender). Send limits with perMailbox count
   * per this identity. Pure. Without it (smtp, mailjet: one account, no mailbox), the sender.
   */
  sendsAs?(sender: string): string;
  close(): Promise<void>;
  /**
   * `smarthost test-upstream`: checks each step of reaching the upstream (token, connection, TLS, login)
   * without sending anything, reporting every step as it ends; resolves true when all passed.
   */
  probe?(report: (step: ProbeStep) => void, options?: ProbeOptions): Promise<boolean>;
}

export interface ProbeOptions {
  /** The sender a test would use; an upstream that logs in as the sender (mailbox: fromSender) tests this one. */
  sender?: string;
}

/** One step of a probe, in words for the person running it. */
export interface ProbeStep {
  /** "token", "connect", "STARTTLS", "AUTH" ... */
  step: string;
  ok: boolean;
  /** What happened: the reply, the TLS version, the error. */
  detail: string;
  /** For a failed step: the likely fix. */
  fix?: string;
}
