/**
 * Just enough of the Dockerfile and .dockerignore formats to replay a build without Docker
 * (test/packaging/dockerfile.test.ts): instructions with line continuations, stages, COPY's flags and
 * sources, exec-form (JSON) arguments, ENV pairs, and .dockerignore's match-or-parent-matches rule.
 */

export interface Instruction {
  keyword: string;
  /** Everything after the keyword, continuations joined. */
  args: string;
  line: number;
}

export interface Stage {
  /** The image FROM names, e.g. node:22-bookworm-slim. */
  image: string;
  /** The name after AS, if any. */
  name: string | undefined;
  instructions: Instruction[];
}

export function parseDockerfile(text: string): Stage[] {
  const instructions: Instruction[] = [];
  let pending: { text: string; line: number } | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    // Comment lines are dropped, also between the lines of a continued instruction (as Docker does).
    if (/^\s*#/.test(line)) return;
    if (pending === undefined && line.trim() === '') return;
    const continued = /\\\s*$/.test(line);
    const part = continued ? line.replace(/\\\s*$/, '') : line;
    pending = pending ? { text: `${pending.text} ${part.trim()}`, line: pending.line } : { text: part.trim(), line: i + 1 };
    if (!continued) {
      const [, keyword, args] = /^(\S+)\s*(.*)$/.exec(pending.text)!;
      instructions.push({ keyword: keyword!.toUpperCase(), args: args!.trim(), line: pending.line });
      pending = undefined;
    }
  });
  const stages: Stage[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === 'FROM') {
      const [, image, name] = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args) ?? [];
      if (!image) throw new Error(`line ${instruction.line}: cannot read FROM ${instruction.args}`);
      stages.push({ image, name, instructions: [] });
    } else if (stages.length === 0) {
      if (instruction.keyword !== 'ARG') throw new Error(`line ${instruction.line}: ${instruction.keyword} before FROM`);
    } else {
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return stages;
}

/** Arguments in exec form (["node", "x.js"]) or shell-ish words; flags (--from=build) are split off. */
export function splitArgs(args: string): { flags: Record<string, string>; words: string[] } {
  const flags: Record<string, string> = {};
  let rest = args;
  for (let m; (m = /^--([a-z-]+)(?:=(\S*))?\s+/.exec(rest)); rest = rest.slice(m[0].length)) flags[m[1]!] = m[2] ?? 'true';
  if (rest.startsWith('[')) return { flags, words: JSON.parse(rest) as string[] };
  return { flags, words: rest.split(/\s+/).filter((w) => w !== '') };
}

/** ENV KEY=VALUE [KEY=VALUE ...] (double quotes allowed around a value), or the old ENV KEY VALUE. */
export function parseEnv(args: string): Record<string, string> {
  if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(args)) {
    const [, key, value] = /^(\S+)\s+(.*)$/.exec(args)!;
    return { [key!]: value! };
  }
  const env: Record<string, string> = {};
  for (const m of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    env[m[1]!] = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!;
  }
  return env;
}

/** HEALTHCHECK [--options] CMD ...: the options and the command in exec form. */
export function parseHealthcheck(args: string): { options: Record<string, string>; command: string[] } {
  const { flags, words } = splitArgs(args.replace(/\bCMD\s+/, ''));
  return { options: flags, command: words };
}

/**
 * A .dockerignore as a predicate over context-relative paths ("src/cli.ts"): true when the file is in the
 * build context. As in Docker, the last pattern that matches the path or one of its parent directories
 * decides; "!" re-includes; "*" and "?" stay within one path segment, "**" crosses them.
 */
export function dockerignore(text: string): (path: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const exclude = !l.startsWith('!');
      const pattern = (exclude ? l : l.slice(1)).replace(/^\/+|\/+$/g, '');
      const source = pattern
        .split(/(\*\*\/?|\*|\?)/)
        .map((part) => (part.startsWith('**') ? '.*' : part === '*' ? '[^/]*' : part === '?' ? '[^/]' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
        .join('');
      return { exclude, regex: new RegExp(`^${source}$`) };
    });
  return (path) => {
    const segments = path.split('/');
    const candidates = segments.map((_, i) => segments.slice(0, i + 1).join('/'));
    let excluded = false;
    for (const rule of rules) if (candidates.some((c) => rule.regex.test(c))) excluded = rule.exclude;
    return !excluded;
  };
}
