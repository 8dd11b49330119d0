/**
 * How admins name senders and recipients in routes, rewrite rules and restrictions:
 *   alice@contoso.com      exactly this address
 *   @contoso.com           any address at this domain (not its subdomains)
 *   *@*.printer.local      a wildcard: * matches any run of characters, ? one character
 *   /^scan-(\d+)@/         a regular expression (JavaScript syntax, flags after the closing slash)
 * Matching ignores case. Wildcards and regular expressions capture ($1, $2, ...) for rewrite targets.
 */
export interface PatternMatch {
  matched: boolean;
  captures: string[];
}

const NO_MATCH: PatternMatch = { matched: false, captures: [] };
const compiled = new Map<string, RegExp>();

/** The problem with a pattern, or undefined when it is usable; config validation reports it by key path. */
export function patternProblem(pattern: string): string | undefined {
  if (pattern.trim() === '') return 'expected an address, @domain, wildcard or /regular expression/';
  try {
    compile(pattern);
    return undefined;
  } catch (err) {
    return `invalid regular expression: ${(err as Error).message}`;
  }
}

export function matchAddress(pattern: string, address: string): PatternMatch {
  const m = compile(pattern).exec(address);
  return m ? { matched: true, captures: m.slice(1).map((c) => c ?? '') } : NO_MATCH;
}

export function matchesAny(patterns: readonly string[], address: string): string | undefined {
  return patterns.find((p) => matchAddress(p, address).matched);
}

/** The domain part of an address, lowercased ('' when there is none). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at === -1 ? '' : address.slice(at + 1).toLowerCase();
}

function compile(pattern: string): RegExp {
  let re = compiled.get(pattern);
  if (re) return re;
  const regex = /^\/(.+)\/([a-z]*)$/s.exec(pattern);
  if (regex) {
    const flags = regex[2]!.includes('i') ? regex[2]! : `${regex[2]}i`;
    re = new RegExp(regex[1]!, flags.replace(/[gy]/g, ''));
  } else if (pattern.startsWith('@')) {
    re = new RegExp(`^[^@]*@${escape(pattern.slice(1))}$`, 'i');
  } else if (/[*?]/.test(pattern)) {
    re = new RegExp(`^${pattern.split(/([*?])/).map((part) => (part === '*' ? '(.*)' : part === '?' ? '(.)' : escape(part))).join('')}$`, 'is');
  } else {
    re = new RegExp(`^${escape(pattern)}$`, 'i');
  }
  compiled.set(pattern, re);
  return re;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** Fills $1..$9 in a rewrite target from a match's captures. */
export function expandTarget(target: string, captures: readonly string[]): string {
  return target.replace(/\$(\d)/g, (_, n: string) => captures[Number(n) - 1] ?? '');
}
