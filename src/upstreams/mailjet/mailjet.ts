/**
 * The `mailjet` upstream: Mailjet's Send API v3.1. Each delivery's spooled MIME is parsed with mailparser and
 * mapped to Send API messages (mapping.ts); deliveries that arrive together share one call (batcher.ts); the
 * per-message answer is spread over the delivery's recipients here. A message the Send API cannot take (over
 * its limits, or signed/encrypted MIME it would rebuild) goes through the smtpFallback upstream when one is
 * configured (Mailjet's SMTP relay passes the MIME through as is), else over-limit mail is bounced.
 */
import { simpleParser, type ParsedMail } from 'mailparser';
import type { Logger } from '../../log.js';
import { SmtpError } from '../../smtp-error.js';
import type { DeliveryRequest, ProbeOptions, ProbeStep, RecipientOutcome, Upstream } from '../upstream.js';
import { postSend, type CallAnswer, type MjResult, type MjResultRecipient } from './api.js';
import { Batcher, type BatchLimits } from './batcher.js';
import { MAILJET_MAX_MESSAGES_PER_CALL, type MailjetUpstreamConfig } from './config.js';
import { classifyMailjetError, relatedRecipient } from './errors.js';
import { ATTACHMENT_LIMIT_AS_MIME_BYTES, LIMITS, limitProblem, mapDelivery, rawMimeReason, type MappedDelivery, type MjMessage, type Placement } from './mapping.js';

export interface MailjetUpstreamOptions {
  /** Where alerts (credentials, unauthorized sender, smarthost bugs) and fallbacks are logged. */
  log?: Logger;
  /** The upstream for messages the Send API cannot take (smtpFallback), already built. */
  fallback?: Upstream;
  /** The configured tag header (tags.header), carried as EventPayload. */
  tagHeader?: string;
  /** HTTP seam for tests. */
  fetch?: typeof fetch;
}

/** mailparser settings that keep the parts as they are: no text made from HTML or HTML from text, cid: links kept. */
const PARSE_OPTIONS = { keepCidLinks: true, skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true, checksumAlgo: false } as const;

export class MailjetUpstream implements Upstream {
  readonly #config: MailjetUpstreamConfig;
  readonly #options: MailjetUpstreamOptions;
  readonly #limits: BatchLimits;
  readonly #batcher: Batcher<MjMessage[], CallAnswer>;
  /** Cuts calls still in flight when the daemon stops: their messages stay queued. */
  readonly #closing = new AbortController();
  #lastAlert: string | undefined;

  constructor(
    readonly name: string,
    config: MailjetUpstreamConfig,
    options: MailjetUpstreamOptions = {},
  ) {
    this.#config = config;
    this.#options = options;
    this.#limits = { maxItems: Math.min(config.batch.maxMessages, MAILJET_MAX_MESSAGES_PER_CALL), maxBytes: config.batch.maxBytes, windowMs: config.batch.window };
    this.#batcher = new Batcher(this.#limits, (items) => this.#call(items));
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    const fallback = this.#options.fallback;
    // Parsing holds every attachment in memory, gigabytes at maxConcurrency for large mail: a message too large to
    // hold only the attachments the Send API takes goes to the fallback unread. Should it be mostly text after all,
    // the fallback, which relays any MIME as is, still delivers it; without a fallback such a message is parsed,
    // so that it goes through the Send API when it fits rather than bounce.
    if (fallback && request.size > ATTACHMENT_LIMIT_AS_MIME_BYTES) {
      return this.#throughFallback(fallback, request, `a message of ${request.size} bytes, over the ${ATTACHMENT_LIMIT_AS_MIME_BYTES} that ${LIMITS.attachmentBytes} bytes of attachments (Mailjet's Send API limit) take as MIME`);
    }
    const parsed = await simpleParser(request.openMessage(), PARSE_OPTIONS);
    const over = limitProblem(parsed, request.recipients);
    const rawOnly = rawMimeReason(parsed);
    if (over || rawOnly) {
      if (fallback) return this.#throughFallback(fallback, request, over?.reason ?? rawOnly!);
      if (over) {
        const error = new SmtpError(over.code, over.enhanced, `message exceeds a limit of Mailjet's Send API (${over.reason}) and upstream ${this.name} has no smtpFallback`);
        return request.recipients.map((recipient) => ({ recipient, delivered: false, error }));
      }
    }
    return this.#send(request, parsed);
  }

  #throughFallback(fallback: Upstream, request: DeliveryRequest, reason: string): Promise<RecipientOutcome[]> {
    this.#options.log?.info({ event: 'mailjet.fallback', upstream: this.name, queueId: request.queueId, fallback: fallback.name, reason }, 'sent through the SMTP fallback');
    return fallback.deliver(request);
  }

  async #send(request: DeliveryRequest, parsed: ParsedMail): Promise<RecipientOutcome[]> {
    const mapped = mapDelivery(parsed, {
      queueId: request.queueId,
      sender: request.sender,
      recipients: request.recipients,
      ...(this.#options.tagHeader ? { tagHeader: this.#options.tagHeader } : {}),
    });
    // A Bcc-only delivery is one copy per recipient, each with every attachment: up to 50 recipients x 15 MB of
    // attachments (the Send API's documented limits, see LIMITS), 20 MB each as base64, a gigabyte together, past
    // the longest string V8 builds. So the copies go in parts of at most batch.maxBytes (a larger copy alone), one
    // part after the other: a call is at most batch.maxBytes or one message, and a delivery holds one call's body.
    const results: MjResult[] = [];
    for (const part of callParts(mapped.messages, this.#limits)) {
      const answer = await this.#batcher.add(part.messages, part.messages.length, part.bytes);
      // The copies not sent yet share the failure: the next call would most likely meet it too.
      if ('error' in answer) return this.#outcomes(request.queueId, mapped, results, answer.error);
      results.push(...answer.results);
    }
    return this.#outcomes(request.queueId, mapped, results);
  }

  /**
   * `smarthost test-upstream`: one Send API call in SandboxMode ("the message will not be delivered", but keys,
   * sender and payload are validated: https://dev.mailjet.com/email/guides/send-api-v31/#sandbox-mode) from the
   * sender to itself. Nothing is sent, whatever sandboxMode says.
   */
  async probe(report: (step: ProbeStep) => void, options: ProbeOptions = {}): Promise<boolean> {
    const sender = options.sender;
    if (sender === undefined || sender === '') {
      report({ step: 'sender', ok: false, detail: 'the Send API validates a message, which needs a sender', fix: 'give a sender address validated in Mailjet with --from ADDRESS' });
      return false;
    }
    const probe: MjMessage = { From: { Email: sender }, To: [{ Email: sender }], Subject: 'smarthost test-upstream', TextPart: 'validated in SandboxMode, never sent' };
    const answer = await postSend({ ...this.#config, sandboxMode: true }, [probe], this.#options.fetch ? { fetch: this.#options.fetch } : {});
    const host = new URL(this.#config.baseUrl).host;
    if ('error' in answer) {
      // alert marks account faults (keys refused, key suspended, sender not allowed): the operator must act.
      const fix = answer.alert ? 'check apiKey and secretKey in the Mailjet account (API key management) and that the key is active' : undefined;
      report({ step: 'Send API', ok: false, detail: answer.error.reply, ...(fix ? { fix } : {}) });
      return false;
    }
    const result = answer.results[0];
    if (result?.Status === 'success') {
      report({ step: 'Send API', ok: true, detail: `${host} accepted the API key and a message from ${sender} in SandboxMode (not delivered)` });
      return true;
    }
    const errors = (result?.Errors ?? []).map((e) => `${e.ErrorCode ?? '?'} ${e.ErrorMessage ?? ''}`.trim());
    report({ step: 'Send API', ok: false, detail: `${host} refused the test message: ${errors.join('; ') || `status ${String(result?.Status)}`}` });
    return false;
  }

  /** One Send API call for several deliveries; each gets back the results of its own messages. */
  async #call(items: MjMessage[][]): Promise<CallAnswer[]> {
    const answer = await postSend(this.#config, items.flat(), { stop: this.#closing.signal, ...(this.#options.fetch ? { fetch: this.#options.fetch } : {}) });
    if ('error' in answer) {
      if (answer.alert) this.#alert(answer.error.reply, {});
      else if (answer.error.temporary) this.#options.log?.warn({ event: 'mailjet.deferred', upstream: this.name, messages: items.flat().length, reply: answer.error.reply }, 'Send API call failed');
      return items.map(() => answer);
    }
    if (answer.results.every((r) => r.Status === 'success')) this.#recovered();
    let offset = 0;
    return items.map((messages) => {
      const results = answer.results.slice(offset, offset + messages.length);
      offset += messages.length;
      return { results };
    });
  }

  /** `unsent`: the error of the call that stopped the delivery, for the messages after its last result. */
  #outcomes(queueId: string, mapped: MappedDelivery, results: MjResult[], unsent?: SmtpError): RecipientOutcome[] {
    return mapped.placements.map((p): RecipientOutcome => {
      const result = results[p.message];
      if (result === undefined && unsent) return { recipient: p.recipient, delivered: false, error: unsent };
      if (result?.Status === 'success') return { recipient: p.recipient, delivered: true, reply: this.#acceptedReply(result, p) };
      if (result?.Status !== 'error') {
        return { recipient: p.recipient, delivered: false, error: new SmtpError(451, '4.3.0', `Mailjet answered status ${String(result?.Status)} for this message`) };
      }
      return { recipient: p.recipient, delivered: false, error: this.#errorFor(queueId, result, p) };
    });
  }

  /**
   * A message Mailjet refused was sent to none of its recipients. An error about one recipient (ErrorRelatedTo
   * "To[1].Email") is that recipient's; the others are deferred and go again without it. Otherwise the
   * message's own error applies to all, a temporary one first: when in doubt, mail waits rather than bounces.
   */
  #errorFor(queueId: string, result: MjResult, p: Placement): SmtpError {
    const errors = result.Errors ?? [];
    const mine = errors.find((e) => e.ErrorRelatedTo?.some((r) => sameSlot(relatedRecipient(r), p)));
    if (mine) return this.#classified(queueId, mine);
    const general = errors.filter((e) => !e.ErrorRelatedTo?.some((r) => relatedRecipient(r)));
    const classified = general.map((e) => this.#classified(queueId, e));
    const chosen = classified.find((e) => e.temporary) ?? classified[0];
    if (chosen) return chosen;
    if (errors.length > 0) {
      return new SmtpError(451, '4.3.0', `not sent: Mailjet refused another recipient of this message (${this.#classified(queueId, errors[0]!).message}); retried without it`);
    }
    return new SmtpError(451, '4.3.0', 'Mailjet answered status error without an error description');
  }

  #classified(queueId: string, error: Parameters<typeof classifyMailjetError>[0]): SmtpError {
    const { error: smtpError, alert } = classifyMailjetError(error);
    if (alert) this.#alert(smtpError.reply, { queueId, errorCode: error.ErrorCode });
    return smtpError;
  }

  #acceptedReply(result: MjResult, p: Placement): string {
    if (this.#config.sandboxMode) return '250 2.0.0 validated by Mailjet in sandbox mode, not delivered';
    const entry = (result[p.field] ?? []).find((r: MjResultRecipient) => r.Email?.toLowerCase() === p.recipient.toLowerCase());
    const id = entry?.MessageHref ? /\/(\d+)$/.exec(entry.MessageHref)?.[1] : undefined;
    const ids = [entry?.MessageUUID ? `MessageUUID ${entry.MessageUUID}` : '', id ? `MessageID ${id}` : ''].filter(Boolean).join(', ');
    return `250 2.0.0 accepted by Mailjet${ids ? ` (${ids})` : ''}`;
  }

  /** An account or smarthost fault: logged as an error once per distinct reply, again after a recovery. */
  #alert(reply: string, fields: Record<string, unknown>): void {
    if (this.#lastAlert === reply) return;
    this.#lastAlert = reply;
    this.#options.log?.error({ event: 'upstream.alert', upstream: this.name, reply, ...fields }, `Mailjet upstream ${this.name} needs attention: ${reply}`);
  }

  #recovered(): void {
    if (this.#lastAlert === undefined) return;
    this.#lastAlert = undefined;
    this.#options.log?.info({ event: 'upstream.recovered', upstream: this.name }, `Mailjet upstream ${this.name} accepts messages again`);
  }

  async close(): Promise<void> {
    this.#closing.abort();
    await this.#batcher.drain();
    await this.#options.fallback?.close();
  }
}

/** The messages in order, in parts of at most limits.maxItems messages and limits.maxBytes of JSON; a larger message is a part alone. */
function callParts(messages: MjMessage[], limits: BatchLimits): { messages: MjMessage[]; bytes: number }[] {
  const parts: { messages: MjMessage[]; bytes: number }[] = [];
  let part: { messages: MjMessage[]; bytes: number } | undefined;
  for (const message of messages) {
    const bytes = jsonBytes(message);
    if (!part || part.messages.length >= limits.maxItems || part.bytes + bytes > limits.maxBytes) parts.push((part = { messages: [], bytes: 0 }));
    part.messages.push(message);
    part.bytes += bytes;
  }
  return parts;
}

/**
 * The size of a message as JSON, without copying its attachments into a string for each Bcc copy that shares
 * them: base64 needs no escaping, so an attachment takes its length.
 */
function jsonBytes(message: MjMessage): number {
  let base64 = 0;
  const rest = JSON.stringify(message, (key, value: unknown) => {
    if (key !== 'Base64Content' || typeof value !== 'string') return value;
    base64 += value.length;
    return '';
  });
  return Buffer.byteLength(rest) + base64;
}

function sameSlot(slot: { field: string; index: number } | undefined, p: Placement): boolean {
  return slot !== undefined && slot.field === p.field && slot.index === p.index;
}
