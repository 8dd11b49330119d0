import { pipeline } from 'node:stream';
import type { Config } from '../config/schema.js';
import { HeaderRewriteStream } from '../rewrite/rewrite-stream.js';
import { rewriteEnvelopeSender, type HeaderEdits } from '../rewrite/sender.js';
import { chooseRoute, type RouteDecision } from '../routing/route.js';
import { SmtpError } from '../smtp-error.js';
import type { MessageRecord } from '../spool/record.js';
import type { Spool } from '../spool/spool.js';
import { MessageUnreadable } from '../spool/unreadable.js';
import type { DeliveryRequest, RecipientOutcome } from '../upstreams/upstream.js';

export interface PreparedDelivery {
  request: DeliveryRequest;
  /** Turns the upstream's outcomes (for the delivered recipients) into one per queued recipient. */
  expand(outcomes: readonly RecipientOutcome[]): RecipientOutcome[];
  /** Set when the envelope sender was rewritten. */
  rewrittenSender?: string;
  /**
   * Set once a stream of this delivery failed on smarthost's side: the queued message could not be read (451
   * 4.3.0), or the header rewrite refused it. Taken where it happens, because the upstreams pass a broken input
   * on in their own words (nodemailer rewrites the error's code to ESTREAM, Graph and Mailjet take it for a
   * network failure): it is the answer for every recipient not delivered, and says nothing about the upstream.
   */
  localFailure(): SmtpError | undefined;
}

/** The routing and rewriting decisions for queued mail, as the scheduler needs them. */
export interface DeliveryPlanner {
  route(message: MessageRecord, recipient: string): RouteDecision;
  prepare(message: MessageRecord, decision: RouteDecision, recipients: readonly string[]): PreparedDelivery;
}

/** Routes with chooseRoute and rewrites with the alias rules: both pure, only the message stream is I/O. */
export function createPlanner(config: Pick<Config, 'routing' | 'users' | 'listeners' | 'rewrite'>, spool: Spool): DeliveryPlanner {
  return {
    route: (message, recipient) =>
      forcedRoute(config, message) ??
      chooseRoute(config, {
        sender: message.sender,
        headerFrom: message.headerFrom ?? [],
        recipient,
        ...(message.client.user !== undefined ? { user: message.client.user } : {}),
        clientAddress: message.client.address,
        listener: message.client.listener,
      }).decision,

    prepare(message, decision, recipients) {
      // A bounce (null sender) is never rewritten; in test mode it still gets the original-recipients header.
      const bounce = message.sender === '';
      const options = bounce ? { rules: [] } : { rules: config.rewrite, ...(decision.forcedSender ? { forcedSender: decision.forcedSender } : {}) };
      const sender = rewriteEnvelopeSender(message.sender, options).address;
      const testMode = decision.testMode;
      const edits: HeaderEdits = {
        options,
        envelope: { original: message.sender, rewritten: sender },
        ...(testMode ? { originalRecipients: recipients } : {}),
      };
      // Outside test mode, messages smarthost wrote itself (bounces) and mail no rule touches go out exactly as stored.
      const untouched = !testMode && (bounce || (config.rewrite.length === 0 && !decision.forcedSender));
      let failure: SmtpError | undefined;
      const noteFailure = (err: unknown) => (failure ??= localFailure(err));
      const request: DeliveryRequest = {
        queueId: message.id,
        sender,
        recipients: testMode ? [testMode.to] : recipients,
        size: message.size,
        ...(message.eightBit ? { eightBit: true } : {}),
        ...(message.utf8Headers ? { utf8Headers: true } : {}),
        openMessage: (options) => {
          const body = spool.openBody(message, options).on('error', noteFailure);
          if (untouched) return body;
          const rewritten = new HeaderRewriteStream(edits).on('error', noteFailure);
          return pipeline(body, rewritten, () => {});
        },
      };
      return {
        request,
        expand: (outcomes) =>
          testMode
            ? recipients.map((recipient) => ({ ...outcomes[0]!, recipient }))
            : [...outcomes],
        ...(sender !== message.sender ? { rewrittenSender: sender } : {}),
        localFailure: () => failure,
      };
    },
  };
}

/**
 * What a failed message stream means, heard before its reader (listeners run in the order they were added):
 * the spool's read failure, or the rewrite's own refusal, copied because nodemailer rewrites the `code` of the
 * error it is handed. Any other error is a reader's own (one that destroyed the stream with it).
 */
function localFailure(err: unknown): SmtpError | undefined {
  if (err instanceof MessageUnreadable) return new SmtpError(451, '4.3.0', err.message, { cause: err });
  if (err instanceof SmtpError) return new SmtpError(err.code, err.enhanced, err.message, { cause: err });
  return undefined;
}

/** The route a message names itself (send-test --route), when the config still has it. */
function forcedRoute(config: Pick<Config, 'routing'>, message: MessageRecord): RouteDecision | undefined {
  if (message.route === undefined) return undefined;
  const i = config.routing.routes.findIndex((r) => r.name === message.route);
  if (i === -1) return undefined;
  const route = config.routing.routes[i]!;
  const testMode = route.testMode ?? config.routing.testMode;
  return {
    via: `routes[${i}] ${route.name} (forced)`,
    upstream: route.upstream,
    ...(route.fallbacks.length > 0 ? { fallbacks: route.fallbacks } : {}),
    ...(route.sender ? { forcedSender: route.sender } : {}),
    ...(testMode ? { testMode } : {}),
  };
}
