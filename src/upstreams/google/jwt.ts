/**
 * The service-account JWT of Google's server-to-server OAuth flow
 * (https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests):
 * header {"alg":"RS256","typ":"JWT","kid":<private_key_id>}, claims iss (the service account), sub (the user
 * to impersonate, domain-wide delegation), scope, aud (the token endpoint), iat and exp (at most one hour
 * later), signed with SHA-256 RSA (RS256) by the account's private key. node:crypto signs it; no library is
 * needed for one signature.
 */
import { sign } from 'node:crypto';

export interface JwtClaims {
  iss: string;
  sub: string;
  scope: string;
  aud: string;
  iat: number;
  exp: number;
}

/** Google refuses an assertion whose exp is more than an hour after iat. */
export const MAX_ASSERTION_LIFETIME_S = 3600;

export function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** header.claims.signature, each base64url-encoded (RFC 7515 compact serialization). */
export function signJwt(claims: JwtClaims, privateKeyPem: string, keyId?: string): string {
  const header = { alg: 'RS256', typ: 'JWT', ...(keyId ? { kid: keyId } : {}) };
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const signature = sign('sha256', Buffer.from(input), privateKeyPem);
  return `${input}.${base64url(signature)}`;
}

/** The claims for impersonating `subject` with `scope` at `audience`, issued at `nowMs`. */
export function serviceAccountClaims(o: { clientEmail: string; subject: string; scope: string; audience: string; nowMs: number }): JwtClaims {
  const iat = Math.floor(o.nowMs / 1000);
  return { iss: o.clientEmail, sub: o.subject, scope: o.scope, aud: o.audience, iat, exp: iat + MAX_ASSERTION_LIFETIME_S };
}
