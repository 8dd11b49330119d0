import https from 'node:https';
import type { INetworkModule, NetworkRequestOptions, NetworkResponse } from '@azure/msal-node';
import { secureContextTrusting } from './trusted-cas.js';

const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * msal's network seam (`system.networkClient`), on node:https so that extra CA certificates can be trusted
 * (a TLS-inspecting proxy, or the test identity provider on loopback). Bodies are JSON both ways round.
 */
export class HttpsNetworkClient implements INetworkModule {
  /** With extra CAs, an agent of its own: the global agent would hand its connections to clients trusting others. */
  readonly #agent: https.Agent | undefined;

  /** `ca`: PEM certificates trusted besides Node's default CAs (the app's caFile). */
  constructor(private readonly options: { ca?: string; timeoutMs?: number } = {}) {
    this.#agent = options.ca ? new https.Agent({ keepAlive: true, secureContext: secureContextTrusting(options.ca) }) : undefined;
  }

  sendGetRequestAsync<T>(url: string, options?: NetworkRequestOptions, timeout?: number): Promise<NetworkResponse<T>> {
    return this.#request<T>('GET', url, options, timeout);
  }

  sendPostRequestAsync<T>(url: string, options?: NetworkRequestOptions): Promise<NetworkResponse<T>> {
    return this.#request<T>('POST', url, options);
  }

  #request<T>(method: 'GET' | 'POST', url: string, options?: NetworkRequestOptions, timeout?: number): Promise<NetworkResponse<T>> {
    const body = method === 'POST' ? (options?.body ?? '') : undefined;
    return new Promise((resolve, reject) => {
      const req = https.request(
        url,
        {
          method,
          headers: { ...(options?.headers ?? {}), ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}) },
          ...(this.#agent ? { agent: this.#agent } : {}),
          timeout: timeout ?? this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            try {
              parsed = text === '' ? {} : JSON.parse(text);
            } catch {
              return reject(new Error(`${method} ${new URL(url).origin}: HTTP ${res.statusCode ?? '?'} with a body that is not JSON`));
            }
            const headers: Record<string, string> = {};
            for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
            resolve({ headers, body: parsed as T, status: res.statusCode ?? 0 });
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${new URL(url).origin}: timed out`)));
      req.on('error', reject);
      req.end(body);
    });
  }
}
