import { isIPv4, isIPv6 } from 'node:net';
import { domainToASCII } from 'node:url';
import { SmtpError } from '../smtp-error.js';

export type AddressKind = 'sender' | 'recipient';

/** RFC 5321 4.5.3.1: 64 octets of local part, 255 of domain, 256 of path including the angle brackets. */
const MAX_LOCAL = 64;
const MAX_DOMAIN = 255;
const MAX_ADDRESS = 254;

// RFC 5321 atext, plus any non-ASCII character (RFC 6531 SMTPUTF8).
const ATOM = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\uffff]+$/;
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;
// C0, DEL and C1 controls; DEL and C1 never belong in an address, UTF-8 or not.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Whether an envelope address (angle brackets already removed by smtp-server) may be used. Besides
 * RFC 5321 syntax this refuses the routing tricks open-relay probes use to make a relay forward mail
 * to a host other than the one the domain names: source routes, the %-hack, UUCP bang paths and
 * addresses with more than one '@'.
 */
export function checkEnvelopeAddress(address: string, kind: AddressKind): SmtpError | undefined {
  if (address === '') {
    return kind === 'sender' ? undefined : new SmtpError(501, '5.1.3', 'Null recipient address not allowed');
  }
  // RFC 5321 4.5.1 requires accepting the bare, case-insensitive "postmaster" as a recipient.
  if (kind === 'recipient' && address.toLowerCase() === 'postmaster') return undefined;
  const reason = addressProblem(address);
  return reason === undefined ? undefined : refuse(kind, reason);
}

/** Lowercases the domain only: the local part may be case-sensitive (RFC 5321 2.4). */
export function normalizeAddress(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  return address.slice(0, at + 1) + address.slice(at + 1).toLowerCase();
}

function refuse(kind: AddressKind, reason: string): SmtpError {
  // X.1.7 is the sender-side twin of X.1.3 (RFC 3463).
  const enhanced = kind === 'sender' ? '5.1.7' : '5.1.3';
  return new SmtpError(553, enhanced, `Bad ${kind} address: ${reason}`);
}

function addressProblem(address: string): string | undefined {
  if (CONTROL.test(address)) return 'control characters not allowed';
  if (address.startsWith('@')) return 'source routes (@host:user@domain) not allowed';
  if (Buffer.byteLength(address) > MAX_ADDRESS) return 'address too long';
  const split = splitLocalPart(address);
  if (typeof split === 'string') return split;
  const { local, rest } = split;
  if (rest === '') return 'missing domain';
  if (!rest.startsWith('@')) return 'unexpected characters after quoted local part';
  const domain = rest.slice(1);
  if (domain.includes('@')) return "more than one '@' not allowed";
  if (Buffer.byteLength(local) > MAX_LOCAL) return 'local part too long';
  return domainProblem(domain);
}

/** Separates the local part (with its quotes, if any) from the rest, or explains why it cannot be used. */
function splitLocalPart(address: string): { local: string; rest: string } | string {
  if (address.startsWith('"')) return splitQuoted(address);
  const at = address.indexOf('@');
  const local = at < 0 ? address : address.slice(0, at);
  if (local.includes('!')) return 'bang paths (host!user) not allowed';
  if (local.includes('%')) return 'percent-hack routing (user%host@relay) not allowed';
  if (local.includes(':')) return 'source routes not allowed';
  if (local === '') return 'missing local part';
  if (/[ \t]/.test(local)) return 'spaces outside quotes not allowed';
  if (!isDotAtom(local)) return 'invalid local part';
  return { local, rest: at < 0 ? '' : address.slice(at) };
}

function splitQuoted(address: string): { local: string; rest: string } | string {
  let content = '';
  for (let i = 1; i < address.length; i++) {
    const ch = address[i] as string;
    if (ch === '\\') {
      if (i + 1 >= address.length) break;
      content += address[++i];
    } else if (ch === '"') {
      if (content === '') return 'missing local part';
      if (/[@%!]/.test(content)) return "quoted local part hides routing characters ('@', '%' or '!')";
      return { local: address.slice(0, i + 1), rest: address.slice(i + 1) };
    } else {
      content += ch;
    }
  }
  return 'unterminated quoted local part';
}

function isDotAtom(text: string): boolean {
  return text.split('.').every((atom) => ATOM.test(atom));
}

function domainProblem(domain: string): string | undefined {
  if (domain === '') return 'missing domain';
  if (domain.startsWith('[')) return isValidLiteral(domain) ? undefined : 'invalid domain literal';
  if (/[ \t]/.test(domain)) return 'spaces outside quotes not allowed';
  if (Buffer.byteLength(domain) > MAX_DOMAIN) return 'domain too long';
  // IDNs are checked in their A-label form, where label and length limits apply.
  const ascii = /^[\x00-\x7f]*$/.test(domain) ? domain : domainToASCII(domain);
  if (ascii === '' || ascii.length > MAX_DOMAIN) return 'invalid domain';
  return ascii.split('.').every((label) => LABEL.test(label)) ? undefined : 'invalid domain';
}

function isValidLiteral(literal: string): boolean {
  if (!literal.endsWith(']')) return false;
  const inner = literal.slice(1, -1);
  if (/^IPv6:/i.test(inner)) return isIPv6(inner.slice(5)) && !inner.includes('%');
  return isIPv4(inner);
}
