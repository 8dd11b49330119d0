/**
 * A small HTTP client on node:http/node:https with keep-alive agents. Not fetch: the app registration may
 * name extra CA certificates (caFile, e.g. a TLS-inspecting proxy), which fetch cannot take per request.
 * Plain http is used only for loopback base URLs (the tests' fake; config.ts refuses it elsewhere).
 */
import http from 'node:http';
import https from 'node:https';
import { secureContextTrusting } from '../oauth/trusted-cas.js';

export interface HttpAnswer {
  status: number;
  /** Lower-cased names. */
  headers: Record<string, string>;
  body: string;
}

export interface HttpRequestInit {
  method: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
  /** The whole exchange, from connecting to the last byte of the answer. */
  timeoutMs: number;
}

export type HttpSend = (url: string, init: HttpRequestInit) => Promise<HttpAnswer>;

export interface NodeHttp {
  send: HttpSend;
  close(): void;
}

/** A timeout, named like AbortSignal.timeout's so errors.ts classifies both alike. */
class TimeoutError extends Error {
  override name = 'TimeoutError';
}

/** `ca`: PEM certificates trusted besides Node's default CAs (the app's caFile). */
export function nodeHttp(options: { ca?: string } = {}): NodeHttp {
  const agents = {
    http: new http.Agent({ keepAlive: true }),
    https: new https.Agent({ keepAlive: true, ...(options.ca ? { secureContext: secureContextTrusting(options.ca) } : {}) }),
  };
  const send: HttpSend = (url, init) =>
    new Promise((resolve, reject) => {
      const target = new URL(url);
      const secure = target.protocol === 'https:';
      const body = init.body === undefined ? undefined : typeof init.body === 'string' ? Buffer.from(init.body, 'utf8') : init.body;
      const headers = { ...init.headers, ...(body !== undefined ? { 'content-length': String(body.length) } : {}) };
      const req = (secure ? https : http).request(target, { method: init.method, headers, agent: secure ? agents.https : agents.http }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', fail);
        res.on('end', () => {
          clearTimeout(timer);
          const out: Record<string, string> = {};
          for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) out[k] = Array.isArray(v) ? v.join(', ') : v;
          resolve({ status: res.statusCode ?? 0, headers: out, body: Buffer.concat(chunks).toString('utf8') });
        });
      });
      const timer = setTimeout(() => req.destroy(new TimeoutError(`${init.method} ${target.origin}: no complete answer within ${init.timeoutMs} ms`)), init.timeoutMs);
      function fail(err: Error): void {
        clearTimeout(timer);
        reject(err);
      }
      req.on('error', fail);
      req.end(body);
    });
  return {
    send,
    close() {
      agents.http.destroy();
      agents.https.destroy();
    },
  };
}
