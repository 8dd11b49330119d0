import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.js';

export const DEFAULT_CONFIG_PATH = join(dirname(fileURLToPath(import.meta.url)), '../../../config/default.yaml');

/** A config that cannot be used; its message lists every problem, one "key.path: problem" per line. */
export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`invalid configuration in ${source}:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** The path given on the command line, else SMARTHOST_CONFIG, else the embedded default. */
export function configPath(explicit?: string): string {
  return explicit ?? process.env.SMARTHOST_CONFIG ?? DEFAULT_CONFIG_PATH;
}

export function loadConfig(path: string): Readonly<Config> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, [`cannot read file: ${(err as Error).message}`]);
  }
  return parseConfig(text, path);
}

export function parseConfig(text: string, source = '<config>'): Readonly<Config> {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(source, doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]!.replace(/:$/, '')}`));
  }
  const result = configSchema.safeParse(doc.toJS() ?? {}, { reportInput: true });
  if (!result.success) throw new ConfigError(source, result.error.issues.flatMap(formatIssue));
  return deepFreeze(result.data);
}

function formatIssue(issue: z.core.$ZodIssue): string[] {
  const path = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => {
      const keyPath = formatPath([...issue.path, key]);
      if (key === 'password' && issue.path[0] === 'users') {
        return `${keyPath}: plaintext passwords are refused; put the output of "smarthost hash-password" in passwordHash`;
      }
      return `${keyPath}: unknown key`;
    });
  }
  if (issue.code === 'invalid_union' && issue.message === 'Invalid input' && 'errors' in issue && issue.errors.length > 0) {
    // zod's bare "Invalid input" says nothing; the one alternative of the value's own type (an object for an object) does.
    const input = 'input' in issue ? issue.input : undefined;
    const ofItsType = issue.errors.filter((branch) => !branch.some((i) => otherTypeWanted(i, input) !== undefined));
    if (ofItsType.length === 1) return ofItsType[0]!.flatMap((i) => formatIssue({ ...i, path: [...issue.path, ...i.path] } as z.core.$ZodIssue));
    const expected = [...new Set(issue.errors.flatMap((branch) => branch.flatMap((i) => otherTypeWanted(i, input) ?? [])))];
    if (ofItsType.length === 0 && expected.length > 0) return [`${path || '(top level)'}: expected ${expected.join(' or ')}${shownInput(issue)}`];
  }
  const message = issue.message.replace(/^Invalid (input|option): /, '');
  if (issue.code === 'invalid_type' && issue.input === undefined) {
    return [`${path}: required key is missing (${message.replace(/, received undefined$/, '')})`];
  }
  // A record key's own schema (e.g. an upstream name) says what is wrong better than "Invalid key in record".
  const detail = issue.code === 'invalid_key' && issue.issues[0] ? `invalid name: ${issue.issues[0].message}` : message;
  return [`${path || '(top level)'}: ${detail}${shownInput(issue)}`];
}

/**
 * What a union alternative wants instead when it refuses the value for its type: another type ("object"), or
 * values of another type (`false` for a string, as limits' `false` does): undefined when the value is of its type.
 */
function otherTypeWanted(issue: z.core.$ZodIssue, input: unknown): string | undefined {
  if (issue.path.length > 0) return undefined;
  if (issue.code === 'invalid_type') return issue.expected;
  if (issue.code !== 'invalid_value' || issue.values.some((v) => typeof v === typeof input)) return undefined;
  const shown = issue.values.map((v) => (typeof v === 'string' ? JSON.stringify(v) : String(v)));
  return shown.length === 1 ? shown[0] : `one of ${shown.join('|')}`;
}

function shownInput(issue: z.core.$ZodIssue): string {
  const shown = 'input' in issue && issue.input !== undefined && typeof issue.input !== 'object' && !isSecretKey(issue.path.at(-1));
  return shown ? `, got ${JSON.stringify(issue.input)}` : '';
}

/** Keys whose refused value may be a password mistyped into the wrong form: never echoed to the terminal. */
const SECRET_KEYS = /^(pass|password|passwordHash|secret|clientSecret|secretKey|privateKey|token|serviceAccount|apiKey)$/i;

function isSecretKey(key: PropertyKey | undefined): boolean {
  return typeof key === 'string' && SECRET_KEYS.test(key);
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((out, key) => {
    if (typeof key === 'number') return `${out}[${key}]`;
    return out ? `${out}.${String(key)}` : String(key);
  }, '');
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value) && Object.getPrototypeOf(value) === Object.prototype || Array.isArray(value)) {
    for (const v of Object.values(value as object)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
