/**
 * The spool keeps a just-stored message's file open for its first delivery attempt (Spool.release closes it),
 * so the descriptors are checked in /proc/self/fd: which files are open, and that none outlives its release.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { buffer as readAll } from 'node:stream/consumers';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord, type MessageRecord } from '../../src/spool/record.js';
import { Spool } from '../../src/spool/spool.js';
import { tempDir } from '../helpers/daemon.js';

function record(): MessageRecord {
  return createRecord({ id: newQueueId(), sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });
}

/** Paths of this process's open descriptors that lie in `dir`. */
async function openFilesIn(dir: string): Promise<string[]> {
  const paths: string[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.startsWith(`${dir}/`)) paths.push(target);
  }
  return paths.sort();
}

test('a stored message is read through the descriptor store opened; streams on it read at their own positions; release closes it', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  t.after(() => spool.close());
  const body = randomBytes(300 * 1024);
  const stored = await spool.store(Readable.from([body]), record());
  assert.deepEqual(await openFilesIn(spool.queueDir), [spool.messagePath(stored.id)]);

  // Interleaved reads of the whole body and of a range, then one abandoned half-way (destroyed): none may
  // disturb another or close the shared descriptor.
  const whole = spool.openBody(stored);
  const range = spool.openBody(stored, { start: 1000, end: 200_000 });
  const abandoned = spool.openBody(stored);
  const [a, b] = await Promise.all([readAll(whole), readAll(range), new Promise<void>((resolve) => abandoned.once('data', () => (abandoned.destroy(), resolve())))]);
  assert.ok(a.equals(body), 'whole body');
  assert.ok(b.equals(body.subarray(1000, 200_001)), 'range');
  assert.ok((await readAll(spool.openBody(stored))).equals(body), 'read again after a stream was destroyed');
  assert.deepEqual(await openFilesIn(spool.queueDir), [spool.messagePath(stored.id)]);

  await spool.release(stored.id);
  assert.deepEqual(await openFilesIn(spool.queueDir), []);
  assert.ok((await readAll(spool.openBody(stored))).equals(body), 'after release it is read by path');
  assert.deepEqual(await openFilesIn(spool.queueDir), []);
});

test('release during a read: the stream is stopped before the descriptor closes, and delivers nothing after', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  t.after(() => spool.close());
  const stored = await spool.store(Readable.from([randomBytes(8 * 1024 * 1024)]), record());
  const stream = spool.openBody(stored);
  let afterRelease = 0;
  let released = false;
  stream.on('data', () => {
    if (released) afterRelease++;
  });
  await new Promise((resolve) => stream.once('data', resolve));
  await spool.release(stored.id);
  released = true;
  assert.equal(stream.destroyed, true);
  assert.deepEqual(await openFilesIn(spool.queueDir), []);
  // Files stored now may take the released descriptor's number.
  const others = await Promise.all(Array.from({ length: 4 }, () => spool.store(Readable.from([Buffer.from('Subject: other\r\n\r\n')]), record())));
  assert.equal(afterRelease, 0);
  for (const other of others) assert.equal((await readAll(spool.openBody(other))).toString(), 'Subject: other\r\n\r\n');
});

test('at most 64 files stay open; the others are read by path; remove and close let go of every descriptor', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const stored = await Promise.all(Array.from({ length: 70 }, (_, i) => spool.store(Readable.from([Buffer.from(`Subject: ${i}\r\n\r\n`)]), record())));
  assert.equal((await openFilesIn(spool.queueDir)).length, 64);
  for (const [i, s] of stored.entries()) assert.equal((await readAll(spool.openBody(s))).toString(), `Subject: ${i}\r\n\r\n`);

  for (const s of stored.slice(0, 10)) await spool.remove(s.id);
  const open = await openFilesIn(spool.queueDir);
  assert.ok(open.length <= 60, `${open.length} still open after removing 10`);
  for (const s of stored.slice(0, 10)) assert.ok(!open.includes(spool.messagePath(s.id)));

  await spool.close();
  assert.deepEqual(await openFilesIn(spool.queueDir), []);
  assert.equal((await readdir(spool.queueDir)).length, 60);
});

test('openBody reads chunkSize bytes at a time, by the kept descriptor and by path, 64 KiB by default; a small message in one chunk', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  t.after(() => spool.close());
  const large = await spool.store(Readable.from([randomBytes(1024 * 1024 + 10)]), record());
  const small = await spool.store(Readable.from([randomBytes(4000)]), record());
  const chunkSizes = async (r: MessageRecord, chunkSize?: number) => {
    const sizes: number[] = [];
    for await (const chunk of spool.openBody(r, chunkSize === undefined ? {} : { chunkSize })) sizes.push((chunk as Buffer).length);
    return sizes;
  };
  const quarters = [262144, 262144, 262144, 262144, 10];
  assert.deepEqual(await chunkSizes(large, 256 * 1024), quarters, 'through the descriptor store kept open');
  assert.deepEqual(await chunkSizes(large), [...Array<number>(16).fill(65536), 10], 'default');
  assert.deepEqual(await chunkSizes(small, 256 * 1024), [4000]);
  await spool.release(large.id);
  assert.deepEqual(await chunkSizes(large, 256 * 1024), quarters, 'by path, once released');
});
