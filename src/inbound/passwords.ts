import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

const KEY_LENGTH = 32;
const DEFAULT_COST = { ln: 15, r: 8, p: 1 };
const FORMAT = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$/;

function derive(password: string, salt: Buffer, cost: { ln: number; r: number; p: number }): Promise<Buffer> {
  const N = 2 ** cost.ln;
  const options: ScryptOptions = { N, r: cost.r, p: cost.p, maxmem: 256 * N * cost.r };
  return new Promise((resolve, reject) =>
    scrypt(password.normalize('NFC'), salt, KEY_LENGTH, options, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

/** A PHC-style scrypt hash: $scrypt$ln=15,r=8,p=1$<salt>$<key>, both base64. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, DEFAULT_COST);
  const { ln, r, p } = DEFAULT_COST;
  return `$scrypt$ln=${ln},r=${r},p=${p}$${salt.toString('base64').replace(/=+$/, '')}$${key.toString('base64').replace(/=+$/, '')}`;
}

/** Cost parameters scrypt can run with: N = 2^ln > 1 and at most 1 GiB of memory (128·N·r bytes). */
function parse(hash: string): { cost: { ln: number; r: number; p: number }; salt: Buffer; key: Buffer } | undefined {
  const m = FORMAT.exec(hash);
  if (!m) return undefined;
  const [ln, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (ln < 1 || r < 1 || p < 1 || 128 * 2 ** ln * r > 2 ** 30) return undefined;
  return { cost: { ln, r, p }, salt: Buffer.from(m[4]!, 'base64'), key: Buffer.from(m[5]!, 'base64') };
}

export function isPasswordHash(text: string): boolean {
  return parse(text) !== undefined;
}

/** Constant-time comparison of the derived key; a malformed hash never matches. */
export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const parsed = parse(hash);
  if (!parsed) return false;
  let actual: Buffer;
  try {
    actual = await derive(password, parsed.salt, parsed.cost);
  } catch {
    return false;
  }
  return parsed.key.length === actual.length && timingSafeEqual(parsed.key, actual);
}
