/**
 * Summarises a V8 .cpuprofile (written by `node --cpu-prof`): self time per function and per module, so
 * the report can name where smarthost spends its CPU without opening DevTools.
 *
 * Run directly: `node dist/bench/profile.js FILE.cpuprofile [TOP]`.
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  /** Sampled time excluding (idle), in ms. */
  busyMs: number;
  idleMs: number;
  functions: { name: string; where: string; selfMs: number }[];
  modules: { module: string; selfMs: number }[];
  /**
   * Time charged to the nearest package or smarthost folder on the stack, so a native socket write or an
   * fs call counts for the code that asked for it (e.g. nodemailer, smtp-server, src/spool).
   */
  callers: { module: string; ms: number }[];
}

/** Our code or a dependency, as opposed to Node's internals and native code. */
const isApplication = (module: string) => !module.startsWith('node:') && !module.startsWith('(');

/** Which part of the program a script URL belongs to: a package, one of our folders, or Node itself. */
function moduleOf(url: string): string {
  if (!url) return '(native / VM)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  const ours = /\/dist\/(src\/[^/]+)\//.exec(url) ?? /\/dist\/(src)\/[^/]+$/.exec(url);
  if (ours) return ours[1]!;
  if (url.startsWith('node:')) return url.split('/')[0]!;
  return url;
}

export function summarizeProfile(path: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Time per sample comes from timeDeltas (the delta before each sample), which is exact where hitCount is not.
  const selfByNode = new Map<number, number>();
  profile.samples.forEach((id, i) => selfByNode.set(id, (selfByNode.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000));
  const functions = new Map<string, { name: string; where: string; selfMs: number }>();
  const modules = new Map<string, number>();
  const callers = new Map<string, number>();
  let idleMs = 0;
  let busyMs = 0;
  for (const [id, ms] of selfByNode) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    if (functionName === '(idle)') {
      idleMs += ms;
      continue;
    }
    busyMs += ms;
    const name = functionName || '(anonymous)';
    const where = url ? `${url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/')}:${lineNumber + 1}` : '';
    const key = `${name} ${where}`;
    const entry = functions.get(key) ?? { name, where, selfMs: 0 };
    entry.selfMs += ms;
    functions.set(key, entry);
    const module = url ? moduleOf(url) : name.startsWith('(') ? name : '(native / VM)';
    modules.set(module, (modules.get(module) ?? 0) + ms);
    let caller: number | undefined = id;
    while (caller !== undefined && !isApplication(moduleOf(byId.get(caller)!.callFrame.url))) caller = parent.get(caller);
    const charged = caller === undefined ? `${module} (no application frame)` : moduleOf(byId.get(caller)!.callFrame.url);
    callers.set(charged, (callers.get(charged) ?? 0) + ms);
  }
  return {
    busyMs,
    idleMs,
    functions: [...functions.values()].sort((a, b) => b.selfMs - a.selfMs).slice(0, top),
    modules: [...modules].map(([module, selfMs]) => ({ module, selfMs })).sort((a, b) => b.selfMs - a.selfMs).slice(0, top),
    callers: [...callers].map(([module, ms]) => ({ module, ms })).sort((a, b) => b.ms - a.ms).slice(0, top),
  };
}

export function formatProfile(path: string, s: ProfileSummary): string {
  const pct = (ms: number) => `${((100 * ms) / s.busyMs).toFixed(1).padStart(5)}%`;
  const lines = [
    `CPU profile ${path}`,
    `  busy ${(s.busyMs / 1000).toFixed(2)} s (idle ${(s.idleMs / 1000).toFixed(2)} s); self time, share of busy:`,
    '  by module (self time):',
    ...s.modules.map((m) => `    ${pct(m.selfMs)}  ${m.module}`),
    '  by the nearest package or smarthost folder on the stack (Node and native calls charged to their caller):',
    ...s.callers.map((m) => `    ${pct(m.ms)}  ${m.module}`),
    '  by function:',
    ...s.functions.map((f) => `    ${pct(f.selfMs)}  ${f.name}  ${f.where}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    console.error('usage: profile.js FILE.cpuprofile [TOP]');
    process.exit(2);
  }
  console.log(formatProfile(file, summarizeProfile(file, Number(top ?? 25))));
}
