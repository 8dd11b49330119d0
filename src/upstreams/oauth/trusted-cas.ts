/**
 * What an app registration's caFile adds to: the CA certificates Node trusts anyway. Node's `ca` option does
 * not add, it replaces: "If specified, the default list would be completely replaced (instead of being
 * concatenated) by the certificates in the ca option. Users need to concatenate manually if they wish to add
 * additional certificates" (tls.createSecureContext, https://nodejs.org/api/tls.html). Given alone, a
 * TLS-inspecting proxy's CA would make every host the proxy does not intercept fail verification.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

/**
 * A TLS context trusting Node's default CAs plus `caFilePem`. Built once per client and reused for every
 * connection: parsing some 150 root certificates takes tens of milliseconds.
 */
export function secureContextTrusting(caFilePem: string): tls.SecureContext {
  return tls.createSecureContext({ ca: [...defaultCAs(), caFilePem] });
}

/**
 * tls.getCACertificates('default') (Node 22.15 and later) is what Node trusts without a `ca` option: the bundled
 * Mozilla roots or the system store (--use-openssl-ca, --use-system-ca), plus NODE_EXTRA_CA_CERTS. Node 20 lacks
 * it; there, the bundled roots (tls.rootCertificates) and NODE_EXTRA_CA_CERTS's file, which Node read at start-up
 * and, like Node, skips when it cannot be read (Node has warned about that already).
 */
function defaultCAs(): readonly string[] {
  const { getCACertificates } = tls as { getCACertificates?: (type: 'default') => string[] };
  if (getCACertificates) return getCACertificates('default');
  const extraFile = process.env.NODE_EXTRA_CA_CERTS;
  let extra: string[] = [];
  if (extraFile) {
    try {
      extra = [readFileSync(extraFile, 'utf8')];
    } catch {
      /* as Node does */
    }
  }
  return [...tls.rootCertificates, ...extra];
}
