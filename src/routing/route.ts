import type { Config } from '../config/schema.js';
import type { MessageRecord } from '../spool/record.js';

/**
 * Which upstream carries a recipient of a message. A pure function of the message's metadata and the
 * config, so the daemon and any explanation of a decision always agree. Today every recipient takes the
 * default route; rules arrive with the routing issue.
 */
export function routeRecipient(config: Pick<Config, 'routing'>, _message: Pick<MessageRecord, 'sender' | 'client'>, _recipient: string): string {
  return config.routing.default;
}
