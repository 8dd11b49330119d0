/**
 * The `graph` upstream: Microsoft Graph sendMail for one app registration (client-credentials token).
 *
 * Messages whose base64 fits one request go as MIME (mime.ts); larger ones through a draft and upload
 * sessions (draft.ts). Either way Graph delivers to exactly the envelope recipients of this delivery
 * (recipients.ts). Graph answers for the whole message, so its answer is spread over every recipient;
 * errors.ts says what each answer means. A delivery with more than 500 recipients is sent as several messages.
 */
import { SmtpError } from '../../smtp-error.js';
import type { TokenSource } from '../oauth/token-source.js';
import type { DeliveryRequest, ProbeOptions, ProbeStep, RecipientOutcome, Upstream } from '../upstream.js';
import { GraphClient, graphScope } from './client.js';
import { DEFAULT_GRAPH_BASE_URL, graphMailbox, type GraphUpstreamConfig } from './config.js';
import { DELETE_AFTER_SUBMIT, planDraft, sendDraft } from './draft.js';
import { classifyGraphError, GraphHttpError } from './errors.js';
import { nodeHttp, type HttpSend, type NodeHttp } from './http.js';
import { MAX_RECIPIENTS_PER_MESSAGE } from './limits.js';
import { mimeForGraph } from './mime.js';

export interface GraphUpstreamDeps {
  /** The app registration's tokens (MsalTokenSource in the daemon, a static source in unit tests). */
  tokens: TokenSource;
  /** The app registration's Graph endpoint, used when the upstream sets no graphBaseUrl of its own. */
  appGraphBaseUrl?: string;
  /** Extra CA certificates (PEM) trusted for Graph: the app registration's caFile. */
  ca?: string;
  /** HTTP seam for tests; default node:http(s) with keep-alive. */
  send?: HttpSend;
}

export class GraphUpstream implements Upstream {
  readonly #config: GraphUpstreamConfig;
  readonly #client: GraphClient;
  readonly #http: NodeHttp | undefined;
  readonly baseUrl: string;

  constructor(
    readonly name: string,
    config: GraphUpstreamConfig,
    deps: GraphUpstreamDeps,
  ) {
    this.#config = config;
    this.baseUrl = config.graphBaseUrl ?? deps.appGraphBaseUrl ?? DEFAULT_GRAPH_BASE_URL;
    this.#http = deps.send ? undefined : nodeHttp(deps.ca ? { ca: deps.ca } : {});
    this.#client = new GraphClient({
      baseUrl: this.baseUrl,
      tokens: deps.tokens,
      scope: graphScope(this.baseUrl),
      timeoutMs: config.timeout,
      maxConcurrentPerMailbox: config.maxConcurrentPerMailbox,
      send: deps.send ?? this.#http!.send,
    });
  }

  sendsAs(sender: string): string {
    return graphMailbox(this.#config, sender);
  }

  async deliver(request: DeliveryRequest): Promise<RecipientOutcome[]> {
    const mailbox = this.sendsAs(request.sender);
    if (!mailbox) {
      const error = new SmtpError(
        550,
        '5.7.1',
        `graph upstream ${this.name} sends from the envelope sender's mailbox (mailbox: fromSender), and a bounce has no sender: route bounces to another upstream or give this one a fixed mailbox`,
      );
      return request.recipients.map((recipient) => ({ recipient, delivered: false, error }));
    }
    const outcomes: RecipientOutcome[] = [];
    for (let i = 0; i < request.recipients.length; i += MAX_RECIPIENTS_PER_MESSAGE) {
      outcomes.push(...(await this.#deliverMessage(request, mailbox, request.recipients.slice(i, i + MAX_RECIPIENTS_PER_MESSAGE))));
    }
    return outcomes;
  }

  /** One Graph message to `recipients`; its one answer becomes every recipient's outcome. */
  async #deliverMessage(request: DeliveryRequest, mailbox: string, recipients: readonly string[]): Promise<RecipientOutcome[]> {
    try {
      const reply = await this.#send(request, mailbox, recipients);
      return recipients.map((recipient) => ({ recipient, delivered: true, reply }));
    } catch (err) {
      const error = classifyGraphError(err);
      return recipients.map((recipient) => ({ recipient, delivered: false, error }));
    }
  }

  async #send(request: DeliveryRequest, mailbox: string, recipients: readonly string[]): Promise<string> {
    const open = () => request.openMessage();
    const mime = await mimeForGraph(request.size, open, recipients);
    if (mime) {
      const requestId = await this.#sendMime(mailbox, mime);
      return `Accepted by Microsoft Graph for ${mailbox} (MIME, ${mime.length} bytes)${requestId ? ` request-id ${requestId}` : ''}`;
    }
    const plan = await planDraft(open, recipients, this.#config.saveToSentItems);
    const uploaded = plan.attachments.filter((a) => !a.bytes).length;
    const requestId = await sendDraft(this.#client, mailbox, plan, open);
    return `Accepted by Microsoft Graph for ${mailbox} (draft, ${plan.attachments.length} attachments, ${uploaded} uploaded separately)${requestId ? ` request-id ${requestId}` : ''}`;
  }

  /**
   * sendMail with the base64 MIME message. sendMail always keeps a copy in Sent Items and takes no
   * saveToSentItems in MIME format, so with saveToSentItems: false the message goes as a MIME draft that is
   * marked delete-after-submit, then sent (three requests; Mail.ReadWrite needed).
   */
  async #sendMime(mailbox: string, mime: Buffer): Promise<string> {
    const user = `/users/${encodeURIComponent(mailbox)}`;
    const body = mime.toString('base64');
    if (this.#config.saveToSentItems) {
      const sent = await this.#client.call(mailbox, { method: 'POST', path: `${user}/sendMail`, contentType: 'text/plain', body });
      return sent.headers['request-id'] ?? '';
    }
    const created = await this.#client.call(mailbox, { method: 'POST', path: `${user}/messages`, contentType: 'text/plain', body });
    const id = created.json<{ id?: unknown }>().id;
    if (typeof id !== 'string') throw new SmtpError(451, '4.3.0', 'Graph created a draft without an id');
    const draft = `${user}/messages/${encodeURIComponent(id)}`;
    try {
      const patch = JSON.stringify({ singleValueExtendedProperties: [DELETE_AFTER_SUBMIT] });
      await this.#client.call(mailbox, { method: 'PATCH', path: draft, contentType: 'application/json', body: patch });
      const sent = await this.#client.call(mailbox, { method: 'POST', path: `${draft}/send`, body: '' });
      return sent.headers['request-id'] ?? '';
    } catch (err) {
      await this.#client.call(mailbox, { method: 'DELETE', path: draft }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * `smarthost test-upstream`, sending nothing: a token; the application permissions in it (for information:
   * permissions granted through RBAC for Applications are not in the token); whether the app may send as the
   * mailbox, by a sendMail with an empty message, which Graph refuses with 400 when the app may send and 403
   * when it may not; whether it may build drafts (the large-message path), by reading the drafts folder.
   * Not GET /users/{mailbox}: that needs User.Read.All, which smarthost has no use for.
   */
  async probe(report: (step: ProbeStep) => void, options: ProbeOptions = {}): Promise<boolean> {
    let token;
    try {
      token = await this.#client.token();
    } catch (err) {
      const e = classifyGraphError(err);
      report({ step: 'token', ok: false, detail: e.reply, fix: `check microsoft.apps.${this.#config.app}: tenant ID, client ID, and the client secret or certificate of the app registration` });
      return false;
    }
    report({ step: 'token', ok: true, detail: `app ${this.#config.app} got a token for ${graphScope(this.baseUrl)}, valid until ${new Date(token.expiresAt).toISOString()}` });
    const roles = tokenRoles(token.token);
    if (roles) {
      const missing = ['Mail.Send', 'Mail.ReadWrite'].filter((r) => !roles.includes(r));
      const note = missing.length > 0 ? `; ${missing.join(' and ')} not among them (fine only if granted through RBAC for Applications)` : '';
      report({ step: 'permissions', ok: true, detail: `application permissions in the token: ${roles.join(', ') || 'none'}${note}` });
    }
    const mailbox = this.#config.mailbox === 'fromSender' ? options.sender : this.#config.mailbox;
    if (!mailbox) {
      report({ step: 'send', ok: false, detail: 'mailbox: fromSender, and no sender to test was given', fix: 'give the sender address whose mailbox should be tested' });
      return false;
    }
    const user = `/users/${encodeURIComponent(mailbox)}`;
    let ok = true;
    try {
      await this.#client.call(mailbox, { method: 'POST', path: `${user}/sendMail`, contentType: 'application/json', body: '{}' });
      report({ step: 'send', ok: true, detail: `${this.baseUrl}: the app may send as ${mailbox}` });
    } catch (err) {
      if (err instanceof GraphHttpError && err.status === 400) {
        report({ step: 'send', ok: true, detail: `${this.baseUrl}: the app may send as ${mailbox} (the empty test message was refused as intended: ${err.code})` });
      } else {
        report({ step: 'send', ok: false, detail: classifyGraphError(err).reply, fix: probeFix(err, mailbox, this.#config.app, 'Mail.Send') });
        ok = false;
      }
    }
    try {
      await this.#client.call(mailbox, { method: 'GET', path: `${user}/mailFolders/drafts?$select=id` });
      report({ step: 'drafts', ok: true, detail: `the app may create drafts in ${mailbox}: messages over 3 MB can be sent` });
    } catch (err) {
      report({ step: 'drafts', ok: false, detail: classifyGraphError(err).reply, fix: probeFix(err, mailbox, this.#config.app, 'Mail.ReadWrite') });
      ok = false;
    }
    return ok;
  }

  async close(): Promise<void> {
    this.#http?.close();
  }
}

function probeFix(err: unknown, mailbox: string, app: string, permission: 'Mail.Send' | 'Mail.ReadWrite'): string {
  if (!(err instanceof GraphHttpError)) return 'check that this host reaches the Graph endpoint (proxy, firewall, DNS) and that graphBaseUrl is right';
  if (err.status === 401) return `Graph refused the token: the app registration microsoft.apps.${app} and graphBaseUrl must belong to the same cloud and tenant`;
  if (err.status === 403) {
    const why = permission === 'Mail.Send' ? 'needed for every message' : 'needed for messages over 3 MB and for saveToSentItems: false';
    return `the app may not use ${mailbox} with ${permission} (${why}): grant the application permission ${permission} with admin consent, or if the app is limited to some mailboxes (RBAC for Applications or an application access policy) include ${mailbox} in its scope; changes can take an hour to apply`;
  }
  if (err.status === 404) return `${mailbox} is not a mailbox in Exchange Online (no such user, no Exchange Online licence, or hosted on-premises)`;
  return 'see the Graph error above';
}

/** The `roles` claim of an app-only access token (a JWT), or undefined when it cannot be read. */
export function tokenRoles(token: string): string[] | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { roles?: unknown };
    return Array.isArray(claims.roles) ? claims.roles.filter((r): r is string => typeof r === 'string') : undefined;
  } catch {
    return undefined;
  }
}
