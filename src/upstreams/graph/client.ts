/**
 * HTTP to Microsoft Graph: bearer tokens from a TokenSource (one forced refresh on a 401),
 * at most `maxConcurrentPerMailbox` requests in flight per mailbox, a timeout per request, and every non-2xx
 * answer turned into a GraphHttpError with Graph's error code, message and Retry-After.
 *
 * Exchange Online allows an app 4 concurrent requests per mailbox, 10,000 per 10 minutes and 150 MB of
 * uploads per 5 minutes (https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits); more
 * gets 429 with Retry-After (https://learn.microsoft.com/graph/throttling).
 */
import { KeyedLimit } from '../keyed-limit.js';
import type { TokenSource } from '../oauth/token-source.js';
import { GraphHttpError, parseRetryAfter } from './errors.js';
import type { HttpSend } from './http.js';

export interface GraphResponse {
  status: number;
  /** Lower-cased names. */
  headers: Record<string, string>;
  body: string;
  json<T>(): T;
}

export interface GraphRequest {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** A path below the Graph base URL ("/users/x/sendMail"), or an absolute URL (an upload session's). */
  path: string;
  contentType?: string;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
  /** Upload URLs are pre-authenticated and must be called without Authorization (see draft.ts). */
  anonymous?: boolean;
}

export interface GraphClientOptions {
  baseUrl: string;
  tokens: TokenSource;
  /** OAuth scope of the Graph resource, e.g. https://graph.microsoft.com/.default. */
  scope: string;
  timeoutMs: number;
  maxConcurrentPerMailbox: number;
  send: HttpSend;
}

/** The client-credentials scope for a Graph base URL: its origin plus /.default (national clouds included). */
export function graphScope(baseUrl: string): string {
  return `${new URL(baseUrl).origin}/.default`;
}

export class GraphClient {
  readonly #o: GraphClientOptions;
  readonly #limits: KeyedLimit;

  constructor(options: GraphClientOptions) {
    this.#o = options;
    this.#limits = new KeyedLimit(options.maxConcurrentPerMailbox);
  }

  get baseUrl(): string {
    return this.#o.baseUrl;
  }

  /** Sends one request on behalf of `mailbox`; resolves with a 2xx answer, throws GraphHttpError otherwise. */
  call(mailbox: string, req: GraphRequest): Promise<GraphResponse> {
    return this.#limits.run(mailbox.toLowerCase(), async () => {
      let answer = await this.#once(req, false);
      // A token revoked or rotated before its expiry: one fresh token, then the 401 stands (the caller defers).
      if (answer.status === 401 && !req.anonymous) answer = await this.#once(req, true);
      if (answer.status >= 200 && answer.status < 300) return answer;
      throw toHttpError(answer);
    });
  }

  /** The token for this client's scope; getToken throws an SmtpError (4.7.0) when none can be had. */
  token(forceRefresh = false): ReturnType<TokenSource['getToken']> {
    return this.#o.tokens.getToken(this.#o.scope, forceRefresh ? { forceRefresh: true } : undefined);
  }

  async #once(req: GraphRequest, forceRefresh: boolean): Promise<GraphResponse> {
    const headers: Record<string, string> = { ...(req.headers ?? {}) };
    if (!req.anonymous) headers.authorization = `Bearer ${(await this.token(forceRefresh)).token}`;
    if (req.contentType) headers['content-type'] = req.contentType;
    const url = /^https?:\/\//.test(req.path) ? req.path : `${this.#o.baseUrl}${req.path}`;
    const res = await this.#o.send(url, { method: req.method, headers, timeoutMs: this.#o.timeoutMs, ...(req.body !== undefined ? { body: req.body } : {}) });
    return { ...res, json: <T>() => JSON.parse(res.body) as T };
  }
}

function toHttpError(answer: GraphResponse): GraphHttpError {
  let code = `HTTP${answer.status}`;
  let message = answer.body.slice(0, 500) || 'no error text';
  try {
    const parsed = answer.json<{ error?: { code?: unknown; message?: unknown } }>();
    if (typeof parsed.error?.code === 'string') code = parsed.error.code;
    if (typeof parsed.error?.message === 'string') message = parsed.error.message;
  } catch {
    // Not JSON (a proxy's error page): the status and the start of the text will do.
  }
  return new GraphHttpError(answer.status, code, message.replace(/\s+/g, ' ').trim(), parseRetryAfter(answer.headers['retry-after']), answer.headers['request-id']);
}
