import { pipeline } from 'node:stream';
import type { Config } from '../config/schema.js';
import { HeaderRewriteStream } from '../rewrite/rewrite-stream.js';
import { rewriteEnvelopeSender, type HeaderEdits } from '../rewrite/sender.js';
import { chooseRoute, type RouteDecision } from '../routing/route.js';
import type { MessageRecord } from '../spool/record.js';
import type { Spool } from '../spool/spool.js';
import type { DeliveryRequest, RecipientOutcome } from '../upstreams/upstream.js';

export interface PreparedDelivery {
  request: DeliveryRequest;
  /** Turns the upstream's outcomes (for the delivered recipients) into one per queued recipient. */
  expand(outcomes: readonly RecipientOutcome[]): RecipientOutcome[];
  /** Set when the envelope sender was rewritten. */
  rewrittenSender?: string;
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
      const request: DeliveryRequest = {
        queueId: message.id,
        sender,
        recipients: testMode ? [testMode.to] : recipients,
        size: message.size,
        ...(message.eightBit ? { eightBit: true } : {}),
        ...(message.utf8Headers ? { utf8Headers: true } : {}),
        openMessage: (options) => {
          const body = spool.openBody(message, options);
          if (untouched) return body;
          const rewritten = new HeaderRewriteStream(edits);
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
      };
    },
  };
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
