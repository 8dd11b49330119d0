/**
 * Self-signed test certificate for localhost / 127.0.0.1, generated once per
 * process with the openssl CLI and cached.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface TestCertificate {
  key: Buffer;
  cert: Buffer;
  keyPath: string;
  certPath: string;
  dir: string;
}

let cached: Promise<TestCertificate> | undefined;

async function generate(): Promise<TestCertificate> {
  const dir = await mkdtemp(join(tmpdir(), 'smarthost-test-tls-'));
  // Best-effort cleanup of the temp dir when the process exits.
  process.once('exit', () => {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* ignore */
    }
  });
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await execFileAsync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout',
    keyPath,
    '-out',
    certPath,
  ]);
  const [key, cert] = await Promise.all([readFile(keyPath), readFile(certPath)]);
  return { key, cert, keyPath, certPath, dir };
}

export async function makeTestCertificate(): Promise<TestCertificate> {
  if (!cached) {
    cached = generate();
    // Do not cache a failure: a later call may retry.
    cached.catch(() => {
      cached = undefined;
    });
  }
  return cached;
}

/** A certificate with a key of its own, never the shared one: for a test that swaps certificates. */
export function makeSeparateCertificate(): Promise<TestCertificate> {
  return generate();
}
