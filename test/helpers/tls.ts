/**
 * Self-signed test certificates for localhost / 127.0.0.1, made with the openssl CLI: one shared per process
 * (makeTestCertificate), or a new one per call for tests that need several unrelated issuers.
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

/** A new self-signed certificate for localhost and 127.0.0.1, its own CA, named `commonName`. */
export async function makeSelfSignedCertificate(commonName: string): Promise<TestCertificate> {
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
    `/CN=${commonName}`,
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
    cached = makeSelfSignedCertificate('localhost');
    // Do not cache a failure: a later call may retry.
    cached.catch(() => {
      cached = undefined;
    });
  }
  return cached;
}

/**
 * Config text (an example or a README block) with the listener certificate files it names under
 * /etc/smarthost/tls pointed at the test certificate: the loader reads them, and they exist on no test machine.
 */
export async function withTestCertificateFiles(text: string): Promise<string> {
  const { certPath, keyPath } = await makeTestCertificate();
  return text.replaceAll('/etc/smarthost/tls/cert.pem', certPath).replaceAll('/etc/smarthost/tls/key.pem', keyPath);
}
