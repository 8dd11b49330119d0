/**
 * How the CLI talks to the running daemon: HTTP to the admin API named in the same config file (admin.host,
 * admin.port, admin.token). Every failure becomes an AdminApiError whose message is one plain sentence.
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { parse } from 'yaml';
import { adminSchema, type AdminConfig } from '../admin/config.js';
import { ConfigError, configPath, loadConfig } from '../config/load.js';

export class AdminApiError extends Error {
  override name = 'AdminApiError';
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

export interface AdminClient {
  /** host:port, for messages. */
  readonly where: string;
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body?: unknown): Promise<T>;
}

/** The admin API of the daemon that runs with this config file. */
export function adminClientFor(configOption: string | undefined): AdminClient {
  const path = configPath(configOption);
  try {
    return adminClient(loadConfig(path).admin);
  } catch (err) {
    // A file edited for a reload may be invalid elsewhere: the daemon refuses it and says why, so its admin
    // section alone is enough to reach it.
    if (!(err instanceof ConfigError)) throw err;
    const admin = adminSection(path);
    if (!admin) throw err;
    return adminClient(admin);
  }
}

function adminSection(path: string): AdminConfig | undefined {
  try {
    const doc = parse(readFileSync(path, 'utf8')) as { admin?: unknown } | null;
    const result = adminSchema.safeParse(doc?.admin ?? {});
    return result.success ? result.data : undefined;
  } catch {
    return undefined;
  }
}

export function adminClient(admin: Pick<AdminConfig, 'enabled' | 'host' | 'port' | 'token'>, timeoutMs = 60_000): AdminClient {
  if (!admin.enabled) throw new AdminApiError('the admin API is disabled in this configuration (admin.enabled: false), so the CLI cannot reach the daemon');
  // A daemon listening on every address is reached through loopback.
  const host = admin.host === '0.0.0.0' ? '127.0.0.1' : admin.host === '::' ? '::1' : admin.host;
  const where = `${host.includes(':') ? `[${host}]` : host}:${admin.port}`;
  const call = <T>(method: string, path: string, body?: unknown): Promise<T> =>
    new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request(
        {
          host,
          port: admin.port,
          method,
          path,
          timeout: timeoutMs,
          headers: {
            accept: 'application/json',
            ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
            ...(admin.token ? { authorization: `Bearer ${admin.token.reveal()}` } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: unknown;
            try {
              json = JSON.parse(text);
            } catch {
              return reject(new AdminApiError(`the admin API at ${where} answered ${res.statusCode} with something that is not JSON; is another program listening there?`, res.statusCode));
            }
            if (res.statusCode === 200) return resolve(json as T);
            const error = (json as { error?: unknown }).error;
            reject(new AdminApiError(typeof error === 'string' ? error : `the admin API at ${where} answered ${res.statusCode}`, res.statusCode));
          });
        },
      );
      req.on('timeout', () => req.destroy(new AdminApiError(`the admin API at ${where} did not answer within ${timeoutMs / 1000}s`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err instanceof AdminApiError) return reject(err);
        reject(new AdminApiError(`cannot reach the smarthost admin API at ${where}: ${describe(err)} — is the daemon running?`));
      });
      req.end(data);
    });
  return { where, get: (path) => call('GET', path), post: (path, body) => call('POST', path, body ?? {}) };
}

function describe(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ECONNRESET':
      return 'connection reset';
    case 'ETIMEDOUT':
      return 'timed out';
    case 'ENOTFOUND':
      return 'host not found';
    default:
      return err.message;
  }
}
