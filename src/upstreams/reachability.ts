/**
 * RCPT TO's question "can the upstream this recipient is routed to deliver to it at all?", answered before the
 * message is accepted: a Direct Send upstream reaches only its tenant's accepted domains, so a recipient
 * routed there from outside them is refused while the client is still connected instead of bouncing later.
 * Pure: routing with the same chooseRoute() the scheduler uses, then acceptsRecipient().
 */
import type { Config } from '../config/schema.js';
import { chooseRoute, type RoutingInput } from '../routing/route.js';
import { SmtpError } from '../smtp-error.js';
import { acceptsRecipient } from './index.js';

/**
 * The RCPT TO refusal for `input.recipient`, or undefined when it may be accepted. The header From is not known
 * at RCPT time: when a route rule matches on headerFrom, routing may change once the message is read, so
 * nothing is refused here and the upstream itself fails such a recipient (permanently, before sending).
 */
export function unreachableRecipient(config: Pick<Config, 'routing' | 'users' | 'listeners' | 'upstreams'>, input: Omit<RoutingInput, 'headerFrom'>): SmtpError | undefined {
  if (config.routing.routes.some((r) => r.match.headerFrom !== undefined)) return undefined;
  const { decision } = chooseRoute(config, { ...input, headerFrom: [] });
  const upstream = Object.hasOwn(config.upstreams, decision.upstream) ? config.upstreams[decision.upstream] : undefined;
  // In test mode the message goes to the test address, not to the recipient.
  const target = decision.testMode?.to ?? input.recipient;
  if (!upstream || acceptsRecipient(upstream, target)) return undefined;
  return new SmtpError(550, '5.7.1', `Recipient address rejected: upstream ${decision.upstream} (Direct Send) reaches only its tenant's accepted domains`);
}
