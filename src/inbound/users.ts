import type { UserConfig } from '../config/schema.js';
import { verifyPassword } from './passwords.js';

// Verified against for unknown user names, so a wrong name costs as much time as a wrong password.
const DUMMY_HASH = '$scrypt$ln=15,r=8,p=1$c21hcnRob3N0LWR1bW15$2Yxj6B5bIo7m0ZbKxS6dCXbqAqcqJ8yAGT0aBY1r2KI';

export class LocalUsers {
  readonly #hashes: Map<string, string>;

  constructor(users: readonly UserConfig[]) {
    this.#hashes = new Map(users.map((u) => [u.name, u.passwordHash]));
  }

  async authenticate(name: string, password: string): Promise<boolean> {
    const hash = this.#hashes.get(name);
    const ok = await verifyPassword(password, hash ?? DUMMY_HASH);
    return ok && hash !== undefined;
  }
}
