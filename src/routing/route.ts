import type { CentralSender, Config, RouteConfig, TestModeConfig } from '../config/schema.js';
import { NetworkList } from '../policy/networks.js';
import { domainOf, matchesAny } from './address-pattern.js';

/** What routing knows about one recipient of a message: envelope, header From, and who sent it from where. */
export interface RoutingInput {
  sender: string;
  /** Addresses in the header From ([] when the message has none). */
  headerFrom: readonly string[];
  recipient: string;
  user?: string;
  clientAddress: string;
  listener: string;
}

/** Where a recipient goes, and the route-level settings that travel with it. */
export interface RouteDecision {
  /** "routes[2] invoices", "user erp", "listener relay" or "default". */
  via: string;
  upstream: string;
  /** Upstreams tried in turn, in the same attempt, when `upstream` is down, over a limit or fails temporarily. */
  fallbacks?: string[];
  /** A central sender forced by the user or the route. */
  forcedSender?: CentralSender;
  testMode?: TestModeConfig;
}

export interface RuleCheck {
  rule: string;
  matched: boolean;
  /** For a rule that did not match: each criterion that failed, in words. */
  reasons: string[];
}

type RoutingConfig = Pick<Config, 'routing' | 'users' | 'listeners'>;

/**
 * Picks the upstream for one recipient: the user's own upstream if set (user settings beat admin settings),
 * else the first route rule that matches, else the listener's upstream, else the default. Pure: the daemon
 * and `smarthost route` call the same function, so an explanation can never differ from what happens.
 */
export function chooseRoute(config: RoutingConfig, input: RoutingInput): { decision: RouteDecision; checks: RuleCheck[] } {
  const user = input.user === undefined ? undefined : config.users.find((u) => u.name === input.user);
  const checks: RuleCheck[] = [];
  const globalTest = config.routing.testMode ? { testMode: config.routing.testMode } : {};
  const userSender = user?.sender ? { forcedSender: user.sender } : {};
  if (user?.upstream) {
    return { decision: { via: `user ${user.name}`, upstream: user.upstream, ...userSender, ...globalTest }, checks };
  }
  for (const [i, route] of config.routing.routes.entries()) {
    const reasons = mismatches(route, input);
    checks.push({ rule: `routes[${i}] ${route.name}`, matched: reasons.length === 0, reasons });
    if (reasons.length > 0) continue;
    const decision: RouteDecision = { via: `routes[${i}] ${route.name}`, upstream: route.upstream, ...globalTest };
    if (route.fallbacks.length > 0) decision.fallbacks = route.fallbacks;
    if (route.testMode) decision.testMode = route.testMode;
    const forced = user?.sender ?? route.sender;
    if (forced) decision.forcedSender = forced;
    return { decision, checks };
  }
  const listener = config.listeners.find((l) => l.name === input.listener);
  if (listener?.upstream) {
    return { decision: { via: `listener ${listener.name}`, upstream: listener.upstream, ...userSender, ...globalTest }, checks };
  }
  return { decision: { via: 'default', upstream: config.routing.default, ...userSender, ...globalTest }, checks };
}

const networkLists = new WeakMap<readonly string[], NetworkList>();

/** Why a rule does not match, one phrase per failed criterion; [] when it matches. */
function mismatches(route: RouteConfig, input: RoutingInput): string[] {
  const m = route.match;
  const reasons: string[] = [];
  if (m.sender && !matchesAny(m.sender, input.sender)) reasons.push(`sender ${quote(input.sender)} matches none of ${m.sender.join(', ')}`);
  if (m.headerFrom && !input.headerFrom.some((a) => matchesAny(m.headerFrom!, a))) {
    reasons.push(`header From ${input.headerFrom.length ? input.headerFrom.join(', ') : '(none)'} matches none of ${m.headerFrom.join(', ')}`);
  }
  if (m.recipient && !matchesAny(m.recipient, input.recipient)) {
    reasons.push(`recipient ${input.recipient} (domain ${domainOf(input.recipient) || 'none'}) matches none of ${m.recipient.join(', ')}`);
  }
  if (m.user && (input.user === undefined || !m.user.includes(input.user))) {
    reasons.push(`user ${input.user ?? '(not authenticated)'} is not ${m.user.join(' or ')}`);
  }
  if (m.network) {
    let list = networkLists.get(m.network);
    if (!list) networkLists.set(m.network, (list = new NetworkList(m.network)));
    if (!list.contains(input.clientAddress)) reasons.push(`client ${input.clientAddress} is in none of ${m.network.join(', ')}`);
  }
  if (m.listener && !m.listener.includes(input.listener)) reasons.push(`listener ${input.listener} is not ${m.listener.join(' or ')}`);
  return reasons;
}

function quote(sender: string): string {
  return sender === '' ? '<> (null sender)' : sender;
}
