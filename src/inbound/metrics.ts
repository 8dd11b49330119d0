import { Counter, Histogram, type Registry } from 'prom-client';
import type { SmtpError } from '../smtp-error.js';
import { TAG_NONE, TAG_OTHER, type TagsConfig } from '../upstreams/tags.js';

/**
 * Why the listener refused something, as a bounded label: every refusal the listener makes itself maps to one
 * of these (smtp-server's own replies, such as 501 for address syntax or 421 for an early talker, are not counted).
 */
export const REJECTION_REASONS = {
  /** More connections to the listener than its maxClients. */
  max_clients: 421,
  connections_per_ip: 421,
  auth_throttled: 421,
  auth_required: 530,
  /** AUTH before STARTTLS (530), or on a listener without TLS (538), without allowInsecureAuth. */
  auth_without_tls: 530,
  rate_limited: 450,
  /** A MAIL FROM or RCPT TO parameter of an extension the listener does not offer. */
  unsupported_parameter: 555,
  sender_address: 553,
  sender_not_allowed: 553,
  recipient_address: 553,
  too_many_recipients: 452,
  suppressed: 550,
  unreachable: 550,
  message_size: 552,
  mail_loop: 554,
  header_from_not_allowed: 550,
  storage: 451,
  connection_lost: 451,
  other: 554,
} as const;

export type RejectionReason = keyof typeof REJECTION_REASONS;

/** The reason behind a refusal at the end of DATA, from its reply. */
export function dataRejectionReason(error: SmtpError): RejectionReason {
  if (error.code === 552) return 'message_size';
  if (error.enhanced === '5.4.0') return 'mail_loop';
  if (error.enhanced === '5.7.1') return 'header_from_not_allowed';
  if (error.enhanced === '4.4.2') return 'connection_lost';
  if (error.enhanced === '4.3.0') return 'storage';
  return 'other';
}

/** Bytes: 1 KB to 100 MB. */
const SIZE_BUCKETS = [1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8];

/** What the SMTP listeners count; one series per listener, set to zero at start. */
export class InboundMetrics {
  readonly connections: Counter<'listener'>;
  readonly messages: Counter<'listener'>;
  readonly rejections: Counter<'listener' | 'reason' | 'code'>;
  readonly authFailures: Counter<'listener'>;
  readonly messageSize: Histogram<'listener'>;
  /** Accepted messages by their tag (tags.header), a label bounded by tags.allowed plus "none" and "other". */
  readonly tagged: Counter<'listener' | 'tag'>;

  constructor(registry: Registry, listeners: readonly string[], tags?: Pick<TagsConfig, 'allowed'>) {
    const registers = [registry];
    this.connections = new Counter({ name: 'smarthost_smtp_connections_total', help: 'SMTP connections opened, per listener', labelNames: ['listener'], registers });
    this.messages = new Counter({ name: 'smarthost_messages_received_total', help: 'Messages accepted and queued (250), per listener', labelNames: ['listener'], registers });
    this.rejections = new Counter({
      name: 'smarthost_smtp_rejections_total',
      help: 'SMTP commands and messages refused by the listener, by reason and reply code',
      labelNames: ['listener', 'reason', 'code'],
      registers,
    });
    this.authFailures = new Counter({ name: 'smarthost_smtp_auth_failures_total', help: 'Failed AUTH attempts, per listener', labelNames: ['listener'], registers });
    this.messageSize = new Histogram({ name: 'smarthost_message_size_bytes', help: 'Size of accepted messages', labelNames: ['listener'], buckets: SIZE_BUCKETS, registers });
    this.tagged = new Counter({
      name: 'smarthost_messages_received_by_tag_total',
      help: 'Messages accepted and queued, per listener and tag (only allow-listed tag values; others count as "other")',
      labelNames: ['listener', 'tag'],
      registers,
    });
    const tagLabels = tags ? [...tags.allowed, TAG_NONE, TAG_OTHER] : [];
    for (const listener of listeners) {
      for (const tag of tagLabels) this.tagged.inc({ listener, tag }, 0);
      this.connections.inc({ listener }, 0);
      this.messages.inc({ listener }, 0);
      this.authFailures.inc({ listener }, 0);
      this.messageSize.zero({ listener });
      for (const [reason, code] of Object.entries(REJECTION_REASONS)) this.rejections.inc({ listener, reason, code: String(code) }, 0);
    }
  }

  rejected(listener: string, reason: RejectionReason, code: number): void {
    this.rejections.inc({ listener, reason, code: String(code) });
  }
}
