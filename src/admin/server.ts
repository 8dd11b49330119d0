/**
 * The admin HTTP listener (node:http, no framework): /metrics, /healthz, /readyz, and the JSON API under
 * /api/ that `smarthost queue`, `status`, `reload`, `log-level` and `send-test` use. With admin.token set,
 * every /api/ request needs "Authorization: Bearer TOKEN"; /metrics and the probes stay open (they change
 * nothing), so Prometheus and a container runtime need no secret.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.js';

export interface ApiReply {
  status: number;
  body: unknown;
}

/** An answer with a status other than 200: thrown by a handler, sent as {"error": message}. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export type ApiHandler = (request: { params: string[]; body: Record<string, unknown>; query: URLSearchParams }) => Promise<unknown>;

/** "GET /api/queue/:id" style routes; each ":x" becomes one entry of params. */
export type ApiRoutes = Record<string, ApiHandler>;

export interface Readiness {
  ready: boolean;
  checks: { name: string; ok: boolean; detail: string }[];
}

export interface AdminServerOptions {
  host: string;
  port: number;
  token?: string;
  registry: Registry;
  readiness(): Promise<Readiness>;
  routes: ApiRoutes;
  log: Logger;
}

const MAX_BODY = 64 * 1024;

interface Route {
  method: string;
  parts: string[];
  handler: ApiHandler;
}

export class AdminServer {
  readonly #server: Server;
  readonly #routes: Route[];

  private constructor(private readonly o: AdminServerOptions) {
    this.#routes = Object.entries(o.routes).map(([key, handler]) => {
      const [method, path] = key.split(' ') as [string, string];
      return { method, parts: path.split('/'), handler };
    });
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        o.log.error({ event: 'admin.error', err }, 'admin request failed');
        send(res, 500, { error: (err as Error).message ?? String(err) });
      });
    });
  }

  static async listen(o: AdminServerOptions): Promise<AdminServer> {
    const admin = new AdminServer(o);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`admin API: cannot listen on ${o.host}:${o.port}: ${err.message}`));
      admin.#server.once('error', onError);
      admin.#server.listen(o.port, o.host, () => {
        admin.#server.off('error', onError);
        resolve();
      });
    });
    return admin;
  }

  get port(): number {
    const a = this.#server.address();
    return typeof a === 'object' && a ? a.port : this.o.port;
  }

  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const method = req.method ?? 'GET';
    if (url.pathname === '/healthz') return sendText(res, 200, 'ok\n');
    if (url.pathname === '/readyz') {
      const r = await this.o.readiness();
      const text = r.checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`).join('\n');
      return sendText(res, r.ready ? 200 : 503, `${r.ready ? 'ready' : 'not ready'}\n${text}\n`);
    }
    if (url.pathname === '/metrics') {
      const body = await this.o.registry.metrics();
      res.writeHead(200, { 'content-type': this.o.registry.contentType });
      return void res.end(body);
    }
    if (!url.pathname.startsWith('/api/')) return send(res, 404, { error: `no such resource ${url.pathname}` });
    if (!this.#authorized(req)) return send(res, 401, { error: 'a valid admin token is required (Authorization: Bearer TOKEN; admin.token in the config)' });
    const parts = url.pathname.split('/');
    const matching = this.#routes.filter((r) => r.parts.length === parts.length && r.parts.every((p, i) => p.startsWith(':') || p === parts[i]));
    if (matching.length === 0) return send(res, 404, { error: `no such API resource ${url.pathname}` });
    // A literal segment beats a parameter: "/api/queue/retry" is not the message "retry".
    const route = matching.filter((r) => r.method === method).sort((a, b) => literals(b) - literals(a))[0];
    if (!route) return send(res, 405, { error: `${method} is not allowed on ${url.pathname}` });
    return this.#dispatch(route, parts, req, res, url);
  }

  async #dispatch(route: Route, parts: string[], req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    let params: string[];
    try {
      params = route.parts.flatMap((p, i) => (p.startsWith(':') ? [decodeURIComponent(parts[i]!)] : []));
    } catch {
      // decodeURIComponent's URIError is the client's mistake, not a failure of the API.
      return send(res, 400, { error: `${url.pathname} has a malformed percent-escape: each % must start a %XX escape of UTF-8` });
    }
    let body: Record<string, unknown> = {};
    try {
      body = await readJson(req);
    } catch (err) {
      return send(res, 400, { error: (err as Error).message });
    }
    try {
      send(res, 200, await route.handler({ params, body, query: url.searchParams }));
    } catch (err) {
      if (err instanceof ApiError) return send(res, err.status, { error: err.message });
      throw err;
    }
  }

  #authorized(req: IncomingMessage): boolean {
    if (this.o.token === undefined) return true;
    const given = Buffer.from(/^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? '');
    const expected = Buffer.from(this.o.token);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }
}

function literals(route: Route): number {
  return route.parts.filter((p) => !p.startsWith(':')).length;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error('request body too large');
    chunks.push(chunk);
  }
  if (size === 0) return {};
  const value = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('expected a JSON object');
  return value as Record<string, unknown>;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return void res.end();
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
  res.end(`${JSON.stringify(body)}\n`);
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(text);
}
