import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { MessageRecord } from '../spool/record.js';
import { TAG_NONE, TAG_OTHER, tagLabel, type TagsConfig } from '../upstreams/tags.js';
import type { UpstreamHealth } from './upstream-health.js';

export type RecipientResult = 'delivered' | 'deferred' | 'bounced' | 'suppressed';

/** The upstream label of recipients that never reached one (suppressed, expired before any attempt). */
export const NO_UPSTREAM = 'none';

/** "5.1" from "5.1.1"; anything that is not a real status class becomes "other", so the label stays bounded. */
export function dsnClass(enhanced: string | undefined): string {
  const m = /^([245])\.(\d{1,3})\.\d{1,3}$/.exec(enhanced ?? '');
  return m && Number(m[2]) <= 7 ? `${m[1]}.${m[2]}` : 'other';
}

const DEFAULT_CLASS: Record<RecipientResult, string> = { delivered: '2.0', deferred: '4.4', bounced: '5.1', suppressed: '5.7' };

/** Seconds: 50 ms to 10 minutes. */
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** The results that end a recipient; deferred does not. */
const FINAL_RESULTS = ['delivered', 'bounced', 'suppressed'] as const;

/** What the scheduler counts per delivery attempt. */
export class DeliveryMetrics {
  readonly recipients: Counter<'upstream' | 'result' | 'dsn_class'>;
  readonly duration: Histogram<'upstream'>;
  /** Final recipient outcomes by their message's tag; only with tags configured. */
  readonly recipientsByTag: Counter<'tag' | 'result'> | undefined;
  readonly #tags: Pick<TagsConfig, 'allowed'> | undefined;

  constructor(registry: Registry, upstreams: readonly string[], tags?: Pick<TagsConfig, 'allowed'>) {
    const registers = [registry];
    this.recipients = new Counter({
      name: 'smarthost_delivery_recipients_total',
      help: 'Recipient outcomes of delivery attempts, per upstream, result (delivered, deferred, bounced, suppressed) and status class',
      labelNames: ['upstream', 'result', 'dsn_class'],
      registers,
    });
    this.duration = new Histogram({
      name: 'smarthost_delivery_duration_seconds',
      help: 'Time one delivery attempt (one upstream call for a group of recipients) took',
      labelNames: ['upstream'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    for (const upstream of upstreams) {
      this.duration.zero({ upstream });
      for (const result of ['delivered', 'deferred', 'bounced'] as const) this.recipients.inc({ upstream, result, dsn_class: DEFAULT_CLASS[result] }, 0);
    }
    this.recipients.inc({ upstream: NO_UPSTREAM, result: 'suppressed', dsn_class: DEFAULT_CLASS.suppressed }, 0);
    this.#tags = tags;
    if (tags) {
      this.recipientsByTag = new Counter({
        name: 'smarthost_delivery_recipients_by_tag_total',
        help: 'Recipients whose delivery ended (delivered, bounced, suppressed), per tag of their message (only allow-listed tag values; others count as "other")',
        labelNames: ['tag', 'result'],
        registers,
      });
      for (const tag of [...tags.allowed, TAG_NONE, TAG_OTHER]) {
        for (const result of FINAL_RESULTS) this.recipientsByTag.inc({ tag, result }, 0);
      }
    }
  }

  /** One recipient's outcome; `tag` is its message's (MessageRecord.tag), labelled with the allow-list in force now. */
  recipient(upstream: string, result: RecipientResult, enhanced: string | undefined, tag: string | undefined): void {
    this.recipients.inc({ upstream, result, dsn_class: result === 'suppressed' ? DEFAULT_CLASS.suppressed : dsnClass(enhanced) });
    if (result !== 'deferred') this.recipientsByTag?.inc({ tag: tagLabel(this.#tags, tag), result });
  }
}

export type QueueState = 'queued' | 'deferred' | 'held';

/** held: put on hold; deferred: a pending recipient was attempted and is waiting for its retry; queued: the rest. */
export function queueState(record: MessageRecord): QueueState {
  if (record.held) return 'held';
  return record.recipients.some((r) => r.status === 'pending' && r.attempts > 0) ? 'deferred' : 'queued';
}

/** Queue depth, the oldest message's age and upstream up/down, read from the scheduler at each scrape. */
export function registerQueueMetrics(registry: Registry, source: { records(): Iterable<MessageRecord>; now(): number; health: UpstreamHealth }): void {
  const registers = [registry];
  new Gauge({
    name: 'smarthost_queue_messages',
    help: 'Messages in the queue, by state (queued, deferred, held)',
    labelNames: ['state'] as const,
    registers,
    collect() {
      const counts: Record<QueueState, number> = { queued: 0, deferred: 0, held: 0 };
      for (const r of source.records()) counts[queueState(r)]++;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  new Gauge({
    name: 'smarthost_queue_oldest_message_age_seconds',
    help: 'Age of the oldest message in the queue (0 when empty)',
    registers,
    collect() {
      let oldest = Infinity;
      for (const r of source.records()) oldest = Math.min(oldest, r.receivedAt);
      this.set(oldest === Infinity ? 0 : Math.max(0, (source.now() - oldest) / 1000));
    },
  });
  new Gauge({
    name: 'smarthost_upstream_up',
    help: 'Whether the upstream answers (0 after consecutive connection-level failures)',
    labelNames: ['upstream'] as const,
    registers,
    collect() {
      for (const s of source.health.states()) this.set({ upstream: s.name }, s.up ? 1 : 0);
    },
  });
}
