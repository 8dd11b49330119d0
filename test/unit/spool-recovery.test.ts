import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { SmtpError } from '../../src/smtp-error.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord, serializeRecord, type MessageRecord } from '../../src/spool/record.js';
import { Spool } from '../../src/spool/spool.js';
import { tempDir } from '../helpers/daemon.js';

function record(id: string): MessageRecord {
  return createRecord({ id, sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });
}

async function storeMessage(spool: Spool, body: Buffer | string = 'Subject: hi\r\n\r\nbody\r\n'): Promise<MessageRecord> {
  return spool.store(Readable.from([Buffer.from(body)]), record(newQueueId()));
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

test('recovery in two steps: load hands over every listed message once, and none stored after the scan', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const before = [await storeMessage(spool), await storeMessage(spool), await storeMessage(spool)];

  const listing = await spool.scan();
  assert.deepEqual(listing.ids, before.map((r) => r.id).sort());
  // Accepted while the queue loads (the listeners are bound by then): the scheduler gets it from the listener.
  const after = await storeMessage(spool);

  const handed: string[] = [];
  const result = await spool.load(listing, (r) => handed.push(r.id));
  assert.deepEqual(handed.sort(), before.map((r) => r.id).sort());
  assert.ok(!handed.includes(after.id), 'the message stored after the scan is not loaded a second time');
  assert.deepEqual(result, { loaded: 3, corrupt: [] });
});

test('load moves a damaged envelope aside and still hands over the intact ones', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const good = await storeMessage(spool);
  const broken = await storeMessage(spool);
  const tampered = serializeRecord(broken).toString().replace('"sender":"app@origin.test"', '"sender":"evil@origin.test"');
  await writeFile(join(spool.queueDir, `${broken.id}.json`), tampered);

  const handed: string[] = [];
  const { loaded, corrupt } = await spool.load(await spool.scan(), (r) => handed.push(r.id));
  assert.deepEqual(handed, [good.id]);
  assert.equal(loaded, 1);
  assert.equal(corrupt.length, 1);
  assert.equal(corrupt[0]!.id, broken.id);
  assert.match(corrupt[0]!.reason, /checksum/);
  assert.equal(corrupt[0]!.movedTo, spool.corruptDir);
  assert.deepEqual((await readdir(spool.corruptDir)).sort(), [`${broken.id}.eml`, `${broken.id}.json`]);
});

test('a damaged envelope that cannot be moved aside is reported and left in place; load still succeeds', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const good = await storeMessage(spool);
  const broken = await storeMessage(spool);
  await writeFile(join(spool.queueDir, `${broken.id}.json`), 'not json at all');
  // corrupt/ replaced by a file: every rename into it fails (ENOTDIR), even for root.
  await rm(spool.corruptDir, { recursive: true });
  await writeFile(spool.corruptDir, 'in the way');

  const handed: string[] = [];
  const { corrupt } = await spool.load(await spool.scan(), (r) => handed.push(r.id));
  assert.deepEqual(handed, [good.id]);
  assert.equal(corrupt.length, 1);
  assert.equal(corrupt[0]!.movedTo, undefined);
  assert.match(corrupt[0]!.reason, /could not be moved aside/);
  assert.ok((await readdir(spool.queueDir)).includes(`${broken.id}.json`), 'the damaged envelope is neither moved nor deleted');
});

test('a store that fails after body bytes reached the disk leaves nothing in queue/ or incoming/', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  // The body is written straight into queue/: more than one write batch (256 KiB) lands there before the failure.
  async function* cutOff() {
    yield randomBytes(300 * 1024);
    throw new Error('client went away');
  }
  await assert.rejects(spool.store(Readable.from(cutOff()), record(newQueueId())), (err: SmtpError) => err.code === 451);
  const refuse = () => {
    throw new SmtpError(550, '5.7.1', 'Sender not allowed in From');
  };
  await assert.rejects(spool.store(Readable.from([Buffer.from('Subject: hi\r\n\r\nbody\r\n')]), record(newQueueId()), refuse), (err: SmtpError) => err.code === 550);
  assert.deepEqual(await readdir(spool.queueDir), []);
  assert.deepEqual(await readdir(spool.incomingDir), []);
  const stored = await storeMessage(spool);
  assert.deepEqual((await readdir(spool.queueDir)).sort(), [`${stored.id}.eml`, `${stored.id}.json`]);
  assert.deepEqual(await readdir(spool.incomingDir), []);
});

test('scan removes leftovers in incoming/ and bodies without an envelope, and lists only queue IDs', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const kept = await storeMessage(spool);
  const orphan = newQueueId();
  await writeFile(join(spool.queueDir, `${orphan}.eml`), 'body without envelope');
  await writeFile(join(spool.incomingDir, `${newQueueId()}.eml`), 'half a message');
  await writeFile(join(spool.queueDir, 'notes.txt'), 'not a queue file');

  const listing = await spool.scan();
  assert.deepEqual(listing.ids, [kept.id]);
  assert.equal(listing.removed.length, 2);
  assert.deepEqual(await readdir(spool.incomingDir), []);
  assert.ok(!(await readdir(spool.queueDir)).includes(`${orphan}.eml`));
});

test('a large body (buffers reclaimed while it streams) is stored and read back byte for byte, whole and in ranges', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  // Several reclaim intervals, in chunks like a socket's, ending mid-interval.
  const chunks = Array.from({ length: 200 }, () => randomBytes(64 * 1024));
  const body = Buffer.concat(chunks);
  const stored = await spool.store(Readable.from(chunks), record(newQueueId()));

  assert.ok((await readAll(spool.openBody(stored.id))).equals(body), 'whole body');
  const start = 5 * 1024 * 1024 + 17;
  const end = 9 * 1024 * 1024 + 3;
  assert.ok((await readAll(spool.openBody(stored.id, { start, end }))).equals(body.subarray(start, end + 1)), 'range (end inclusive)');
});
