/**
 * The lowdb adapter for state that must survive a crash: what is written is read back, a missing file reads as
 * null, no temporary file is left behind, a failed write leaves the previous file whole, and every write
 * fsyncs the file and then its directory (seen through strace when it is installed, else skipped).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DurableJsonFile } from '../../src/state/durable-json-file.js';

async function dir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const path = await mkdtemp(join(tmpdir(), 'smarthost-state-'));
  t.after(() => rm(path, { recursive: true, force: true }));
  return path;
}

test('writes are read back, a missing file reads as null, and no temporary file stays', async (t) => {
  const path = await dir(t);
  const adapter = new DurableJsonFile<{ n: number; list: string[] }>(join(path, 'state.json'));
  assert.equal(await adapter.read(), null);
  await adapter.write({ n: 1, list: ['a@b.test'] });
  await adapter.write({ n: 2, list: ['a@b.test', 'c@d.test'] });
  assert.deepEqual(await adapter.read(), { n: 2, list: ['a@b.test', 'c@d.test'] });
  assert.deepEqual(await readdir(path), ['state.json']);
  assert.equal(await readFile(join(path, 'state.json'), 'utf8'), JSON.stringify({ n: 2, list: ['a@b.test', 'c@d.test'] }, null, 2), 'the same format as lowdb\'s JSONFile');
});

test('a temporary file in the way (a directory of that name) fails the write, cleans up and keeps the file', async (t) => {
  const path = await dir(t);
  const file = join(path, 'state.json');
  await writeFile(file, JSON.stringify({ n: 1 }));
  const { mkdir } = await import('node:fs/promises');
  await mkdir(join(path, `.state.json.${process.pid}.tmp`));
  const adapter = new DurableJsonFile<{ n: number }>(file);
  await assert.rejects(adapter.write({ n: 2 }), /EISDIR/);
  assert.deepEqual(await adapter.read(), { n: 1 });
});

const strace = spawnSync('strace', ['-V']).status === 0;

test('each write fsyncs the temporary file before the rename and the directory after it', { skip: strace ? false : 'strace is not installed' }, async (t) => {
  const path = await dir(t);
  const module = fileURLToPath(new URL('../../src/state/durable-json-file.js', import.meta.url));
  const script = `const { DurableJsonFile } = await import(${JSON.stringify(module)}); await new DurableJsonFile(${JSON.stringify(join(path, 'state.json'))}).write({ n: 1 });`;
  // -y prints the path behind each file descriptor; fsync runs on libuv's threads, hence -f.
  const run = spawnSync('strace', ['-f', '-y', '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const events: string[] = [];
  for (const line of run.stderr.split('\n')) {
    const synced = /\b(?:fsync|fdatasync)\(\d+<([^>]+)>/.exec(line);
    if (synced) events.push(`fsync ${synced[1]}`);
    const renamed = /rename(?:at2?)?\((?:[^,]*, )?"([^"]+)", (?:[^,]*, )?"([^"]+)"/.exec(line);
    if (renamed) events.push(`rename ${renamed[1]} -> ${renamed[2]}`);
  }
  const temp = join(path, `.state.json.`);
  const mine = events.filter((e) => e.includes(path));
  assert.equal(mine.length, 3, mine.join('\n'));
  assert.ok(mine[0]!.startsWith(`fsync ${temp}`), mine[0]);
  assert.ok(mine[1]!.startsWith(`rename ${temp}`) && mine[1]!.endsWith(`-> ${join(path, 'state.json')}`), mine[1]);
  assert.equal(mine[2], `fsync ${path}`);
});
