import { readFileSync } from 'node:fs';
import { z } from 'zod';

/**
 * A secret is written one of three ways, resolved once when the config is loaded:
 *   password: "inline value"
 *   password: { env: SMTP_PASSWORD }         # from the environment
 *   password: { file: /run/secrets/smtp }    # from a file; one trailing newline is dropped
 * The resolved value is wrapped so that logging or JSON-serialising the config never prints it.
 */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return '[secret]';
  }
  toJSON(): string {
    return '[secret]';
  }
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return '[secret]';
  }
}

export const secret = z
  .union([z.string().min(1), z.strictObject({ env: z.string().min(1) }), z.strictObject({ file: z.string().min(1) })], {
    error: 'expected a secret: a string, { env: VARIABLE } or { file: PATH }',
  })
  .transform((v, ctx) => {
    if (typeof v === 'string') return new Secret(v);
    if ('env' in v) {
      const value = process.env[v.env];
      if (value === undefined || value === '') {
        ctx.addIssue({ code: 'custom', message: `environment variable ${v.env} is not set` });
        return z.NEVER;
      }
      return new Secret(value);
    }
    try {
      return new Secret(readFileSync(v.file, 'utf8').replace(/\r?\n$/, ''));
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `cannot read secret file ${v.file}: ${(err as Error).message}` });
      return z.NEVER;
    }
  });
