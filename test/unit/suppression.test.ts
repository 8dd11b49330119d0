/**
 * The suppression list on its own: lowdb file format, case-insensitive lookups, changes made by another
 * process (the CLI) picked up by reload and by the watcher, damaged files, and the lock that keeps two
 * writers from losing each other's changes.
 */
import assert from 'node:assert/strict';
import { readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { SuppressionFileError, SuppressionList, suppressionKey } from '../../src/policy/suppression.js';
import { tempDir } from '../helpers/daemon.js';

async function stateDir(t: TestContext): Promise<string> {
  const dir = await tempDir('smarthost-suppression-');
  t.after(() => dir.remove());
  return join(dir.path, 'state');
}

async function openList(t: TestContext, dir: string): Promise<SuppressionList> {
  const list = await SuppressionList.open(dir);
  t.after(() => list.close());
  return list;
}

/** Replaces the file the way an editor that writes a copy and renames it does, so no poll sees half a file. */
async function replaceFile(path: string, text: string): Promise<void> {
  await writeFile(`${path}.edit`, text);
  await rename(`${path}.edit`, path);
}

/** Resolves with the next reload or error the watcher reports. */
function watchOnce(list: SuppressionList): { reloaded: Promise<number>; failed: Promise<Error>; events: string[] } {
  const events: string[] = [];
  let reload!: (n: number) => void;
  let fail!: (e: Error) => void;
  const reloaded = new Promise<number>((r) => (reload = r));
  const failed = new Promise<Error>((r) => (fail = r));
  list.watch({
    intervalMs: 10,
    onReload: (n) => (events.push(`reload ${n}`), reload(n)),
    onError: (e) => (events.push(`error ${e.message}`), fail(e)),
  });
  return { reloaded, failed, events };
}

test('a list that was never written is empty, and opening it creates no file', async (t) => {
  const dir = await stateDir(t);
  const list = await openList(t, dir);
  assert.equal(list.size, 0);
  assert.deepEqual(list.entries(), []);
  assert.equal(list.has('anyone@example.com'), false);
  await assert.rejects(readFile(list.file), { code: 'ENOENT' });
});

test('add, list and remove are written to <state.dir>/suppression.json in the documented shape', async (t) => {
  const dir = await stateDir(t);
  const list = await openList(t, dir);
  assert.equal(list.file, join(dir, 'suppression.json'));
  const first = await list.add('alice@example.com', 'asked to be removed', new Date('2025-03-01T10:00:00Z'));
  assert.deepEqual(first, { added: true, entry: { address: 'alice@example.com', reason: 'asked to be removed', addedAt: '2025-03-01T10:00:00.000Z' } });
  await list.add('bob@example.org', 'complaint', new Date('2025-03-02T10:00:00Z'));

  const onDisk = JSON.parse(await readFile(list.file, 'utf8')) as unknown;
  assert.deepEqual(onDisk, {
    suppressed: [
      { address: 'alice@example.com', reason: 'asked to be removed', addedAt: '2025-03-01T10:00:00.000Z' },
      { address: 'bob@example.org', reason: 'complaint', addedAt: '2025-03-02T10:00:00.000Z' },
    ],
  });
  assert.deepEqual(list.entries().map((e) => e.address), ['alice@example.com', 'bob@example.org']);

  const removed = await list.remove('alice@example.com');
  assert.equal(removed?.reason, 'asked to be removed');
  assert.equal(list.has('alice@example.com'), false);
  assert.equal(await list.remove('alice@example.com'), undefined, 'a second remove finds nothing');
  const after = JSON.parse(await readFile(list.file, 'utf8')) as { suppressed: { address: string }[] };
  assert.deepEqual(after.suppressed.map((e) => e.address), ['bob@example.org']);
});

test('addresses compare case-insensitively, with or without angle brackets, for lookups, adds and removes', async (t) => {
  const list = await openList(t, await stateDir(t));
  await list.add('Alice.Smith@Example.COM', 'first');
  assert.equal(list.has('alice.smith@example.com'), true);
  assert.equal(list.has('ALICE.SMITH@EXAMPLE.COM'), true);
  assert.equal(list.has('<alice.smith@example.com>'), true);
  assert.equal(list.has('alice.smith@example.co'), false);
  assert.equal(list.has('xalice.smith@example.com'), false);

  const again = await list.add('alice.smith@example.com', 'second');
  assert.equal(again.added, false, 'the same address in other case is already listed');
  assert.equal(again.entry.reason, 'first', 'and keeps its original entry');
  assert.equal(list.size, 1);

  assert.ok(await list.remove('ALICE.SMITH@example.com'));
  assert.equal(list.size, 0);
});

test('a quoted local part that needs no quotes is the same mailbox as the unquoted one', async (t) => {
  assert.equal(suppressionKey('"Victim"@Dest.test'), 'victim@dest.test');
  assert.equal(suppressionKey('<"vic\\tim"@dest.test>'), 'victim@dest.test');
  assert.equal(suppressionKey('"first.last"@dest.test'), 'first.last@dest.test');
  // Quotes that are needed stay: such a local part cannot be written any other way.
  assert.equal(suppressionKey('"two words"@dest.test'), '"two words"@dest.test');
  assert.equal(suppressionKey('"a..b"@dest.test'), '"a..b"@dest.test');
  const list = await openList(t, await stateDir(t));
  await list.add('victim@dest.test', 'unsubscribed');
  assert.equal(list.has('"victim"@dest.test'), true);
  assert.equal((await list.add('"VICTIM"@dest.test', 'again')).added, false);
  assert.ok(await list.remove('"victim"@dest.test'));
  assert.equal(list.size, 0);
});

test('reload picks up a change another process made; without a change it does not re-read', async (t) => {
  const dir = await stateDir(t);
  const daemon = await openList(t, dir);
  const cli = await openList(t, dir);
  assert.equal(await daemon.reload(), false, 'nothing changed yet');

  await cli.add('carol@example.com', 'via the CLI');
  assert.equal(daemon.has('carol@example.com'), false, 'the other copy has not looked yet');
  assert.equal(await daemon.reload(), true);
  assert.equal(daemon.has('CAROL@example.com'), true);
  assert.equal(await daemon.reload(), false, 'a second reload finds no change');

  await cli.remove('carol@example.com');
  assert.equal(await daemon.reload(), true);
  assert.equal(daemon.has('carol@example.com'), false);
});

test('the watcher reloads after an external edit of the file and after it is deleted', async (t) => {
  const dir = await stateDir(t);
  const list = await openList(t, dir);
  await list.add('dave@example.com', 'x');
  // The list's own write is seen by the watcher as a change once; let that pass first.
  await list.reload();

  const first = watchOnce(list);
  // An admin editing the file by hand (not through lowdb): a new address, different case.
  await replaceFile(list.file, JSON.stringify({ suppressed: [{ address: 'Erin@Example.com', reason: 'by hand', addedAt: '2025-01-01T00:00:00.000Z' }] }));
  assert.equal(await first.reloaded, 1);
  assert.equal(list.has('erin@example.com'), true);
  assert.equal(list.has('dave@example.com'), false, 'the file is the truth, not the copy in memory');
  await list.close();

  const second = watchOnce(list);
  await rm(list.file);
  assert.equal(await second.reloaded, 0);
  assert.equal(list.has('erin@example.com'), false);
});

test('a damaged file stops open, and on reload is reported once while the last good list stays in force', async (t) => {
  const dir = await stateDir(t);
  const list = await openList(t, dir);
  await list.add('frank@example.com', 'x');
  await list.reload();

  const watching = watchOnce(list);
  await replaceFile(list.file, '{"suppressed": [ {"address": "half');
  const err = await watching.failed;
  await list.close();
  assert.ok(err instanceof SuppressionFileError, String(err));
  assert.match(err.message, /cannot use the suppression list .*suppression\.json/);
  assert.equal(list.has('frank@example.com'), true, 'the previous list still applies');
  assert.equal(await list.reload(), false, 'the same damaged file is not read and reported again');
  assert.deepEqual(watching.events.filter((e) => e.startsWith('error')).length, 1);

  await assert.rejects(SuppressionList.open(dir), SuppressionFileError);
  await assert.rejects(list.add('grace@example.com', 'x'), SuppressionFileError, 'a damaged file is not overwritten');
  assert.equal(await readFile(list.file, 'utf8'), '{"suppressed": [ {"address": "half');

  // Valid JSON of the wrong shape is refused too, naming the key that is wrong.
  await replaceFile(list.file, JSON.stringify({ suppressed: [{ address: 'heidi@example.com' }] }));
  await assert.rejects(SuppressionList.open(dir), /suppressed\.0\.reason/);

  const repaired = watchOnce(list);
  await replaceFile(list.file, JSON.stringify({ suppressed: [] }));
  // The wrong-shape version may be seen (and reported) first; the repaired one reloads.
  assert.equal(await repaired.reloaded, 0);
  assert.equal(list.has('frank@example.com'), false);
});

test('two writers adding at the same time lose none of each other\'s addresses', async (t) => {
  const dir = await stateDir(t);
  const a = await openList(t, dir);
  const b = await openList(t, dir);
  const adds = [];
  for (let i = 0; i < 15; i++) adds.push(a.add(`a${i}@example.com`, 'a'), b.add(`b${i}@example.com`, 'b'));
  await Promise.all(adds);
  const fresh = await openList(t, dir);
  assert.equal(fresh.size, 30, fresh.entries().map((e) => e.address).join(' '));
  await assert.rejects(readFile(`${fresh.file}.lock`), { code: 'ENOENT' }, 'the lock file is gone afterwards');
});

test('a lock file left behind by a process that died long ago does not block changes', async (t) => {
  const dir = await stateDir(t);
  const list = await openList(t, dir);
  await list.add('ivan@example.com', 'x');
  const lock = `${list.file}.lock`;
  await writeFile(lock, '99999\n');
  const longAgo = new Date(Date.now() - 10 * 60_000);
  await utimes(lock, longAgo, longAgo);
  await list.add('judy@example.com', 'y');
  assert.equal(list.has('judy@example.com'), true);
});
