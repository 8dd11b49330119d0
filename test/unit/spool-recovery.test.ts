import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer as readAll } from 'node:stream/consumers';
import { SmtpError } from '../../src/smtp-error.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord, serializeRecord, type MessageRecord } from '../../src/spool/record.js';
import { encodeTrailer } from '../../src/spool/message-file.js';
import { Spool } from '../../src/spool/spool.js';
import { tempDir } from '../helpers/daemon.js';

function record(id: string): MessageRecord {
  return createRecord({ id, sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } });
}

async function storeMessage(spool: Spool, body: Buffer | string = 'Subject: hi\r\n\r\nbody\r\n'): Promise<MessageRecord> {
  return spool.store(Readable.from([Buffer.from(body)]), record(newQueueId()));
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
  assert.deepEqual(result, { loaded: 3, removed: [], corrupt: [], unreadable: [] });
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
  assert.deepEqual((await readdir(spool.corruptDir)).sort(), [`${broken.id}.json`, `${broken.id}.msg`]);
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

test('a message whose files the system will not let load read stays in queue/ untouched, is reported, and loads at the next start', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const good = await storeMessage(spool);
  const plain = await storeMessage(spool);
  const deferred = await storeMessage(spool);
  deferred.held = true;
  await spool.update(deferred);
  await spool.close();
  // A directory in a file's place: reading it fails with EISDIR, an error from the system as EMFILE or EIO
  // would be (and, unlike a file's mode, one that stops root too), while the message itself is intact.
  const blocked = [spool.messagePath(plain.id), spool.statePath(deferred.id)];
  for (const path of blocked) {
    await rename(path, `${path}.aside`);
    await mkdir(path);
  }

  const restarted = await Spool.open(dir.path);
  const handed: string[] = [];
  const result = await restarted.load(await restarted.scan(), (r) => handed.push(r.id));
  assert.deepEqual(handed, [good.id]);
  assert.deepEqual(result.corrupt, []);
  assert.deepEqual(result.unreadable.map((u) => u.id).sort(), [plain.id, deferred.id].sort());
  for (const u of result.unreadable) assert.match(u.reason, /EISDIR/);
  assert.deepEqual(await readdir(restarted.corruptDir), [], 'nothing is moved aside');
  await restarted.close();

  for (const path of blocked) {
    await rmdir(path);
    await rename(`${path}.aside`, path);
  }
  const again = await Spool.open(dir.path);
  const loaded = new Map<string, MessageRecord>();
  const second = await again.load(await again.scan(), (r) => loaded.set(r.id, r));
  assert.deepEqual([...loaded.keys()].sort(), [good.id, plain.id, deferred.id].sort());
  assert.equal(loaded.get(deferred.id)!.held, true, 'the state file is the one read');
  assert.deepEqual({ corrupt: second.corrupt, unreadable: second.unreadable }, { corrupt: [], unreadable: [] });
  await again.close();
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
  assert.deepEqual(await readdir(spool.queueDir), [`${stored.id}.msg`], 'one file per message');
  assert.deepEqual(await readdir(spool.incomingDir), []);
});

test('scan removes leftovers in incoming/, state files without their message and old bodies without an envelope, and lists only queue IDs', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const kept = await storeMessage(spool);
  const orphanState = newQueueId();
  await writeFile(join(spool.queueDir, `${orphanState}.json`), serializeRecord(record(orphanState)));
  const oldOrphan = newQueueId();
  await writeFile(join(spool.queueDir, `${oldOrphan}.eml`), 'body without envelope (two-file layout)');
  await writeFile(join(spool.incomingDir, `${newQueueId()}.json.update`), 'half a state file');
  await writeFile(join(spool.queueDir, 'notes.txt'), 'not a queue file');

  const listing = await spool.scan();
  assert.deepEqual(listing.ids, [kept.id]);
  assert.equal(listing.removed.length, 3);
  assert.deepEqual(await readdir(spool.incomingDir), []);
  assert.deepEqual((await readdir(spool.queueDir)).sort(), [`${kept.id}.msg`, 'notes.txt']);
});

/**
 * What a crash can leave of a message whose client sent bytes shaped like a spool envelope naming `envelopeId`,
 * with forged recipients: the file cut right after them.
 */
function cutAfterClientEnvelope(envelopeId: string): Buffer {
  const prefix = Buffer.from('Subject: innocent\r\n\r\n');
  const forged = { ...record(envelopeId), recipients: record(envelopeId).recipients.map((r) => ({ ...r, address: 'victim@elsewhere.test' })), size: prefix.length };
  return Buffer.concat([prefix, encodeTrailer(forged)]);
}

test('a message file never completed is removed when loaded, even one whose last bytes look like an envelope', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  // A client can send bytes shaped like a spool envelope; a crash right after a write batch leaves them last.
  const id = newQueueId();
  const cut = cutAfterClientEnvelope(id);
  await writeFile(spool.messagePath(id), cut, { mode: 0o600 });

  const handed: MessageRecord[] = [];
  const result = await spool.load(await spool.scan(), (r) => handed.push(r));
  assert.deepEqual(handed, []);
  assert.deepEqual(result, { loaded: 0, removed: [`${id}.msg`], corrupt: [], unreadable: [] });
  assert.deepEqual(await readdir(spool.queueDir), []);

  // The same bytes marked complete would be taken at their word: the mark is what tells them apart.
  await writeFile(spool.messagePath(id), cut);
  await chmod(spool.messagePath(id), 0o700);
  const taken: MessageRecord[] = [];
  await spool.load(await spool.scan(), (r) => taken.push(r));
  assert.deepEqual(taken.map((r) => r.recipients[0]!.address), ['victim@elsewhere.test']);
});

test('a file marked complete but cut short before its envelope is quarantined: the envelope the client wrote cannot name the file', async (t) => {
  // The mode and the last write reach the disk in one fsync, in no fixed order, so a crash before it returns can
  // leave the mark on a file that ends in client bytes. Those can be shaped like an envelope, but not with this
  // file's queue ID: its random part is first shown to the client in the 250, after the body.
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const id = newQueueId();
  const guessed = newQueueId();
  await writeFile(spool.messagePath(id), cutAfterClientEnvelope(guessed));
  await chmod(spool.messagePath(id), 0o700);

  const handed: MessageRecord[] = [];
  const result = await spool.load(await spool.scan(), (r) => handed.push(r));
  assert.deepEqual(handed, []);
  assert.equal(result.loaded, 0);
  assert.deepEqual(
    result.corrupt.map((c) => ({ id: c.id, reason: c.reason })),
    [{ id, reason: `record names another queue ID (${guessed})` }],
  );
  assert.deepEqual(await readdir(spool.corruptDir), [`${id}.msg`]);
});

test('a state file wins over the envelope the message arrived with; remove deletes both; the body excludes the envelope', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const body = 'Subject: no blank line, no body';
  const stored = await storeMessage(spool, body);
  assert.equal(stored.size, body.length);
  const deferred: MessageRecord = {
    ...stored,
    recipients: stored.recipients.map((r) => ({ ...r, attempts: 1, nextAttemptAt: stored.receivedAt + 300_000, lastReply: { code: 451, enhanced: '4.3.0', text: 'later' } })),
  };
  await spool.update(deferred);
  assert.deepEqual((await readdir(spool.queueDir)).sort(), [`${stored.id}.json`, `${stored.id}.msg`]);

  // As after a restart: a new Spool on the same directory.
  const again = await Spool.open(dir.path);
  const { records } = await again.recover();
  assert.deepEqual(records, [deferred]);
  assert.deepEqual(await again.readRecord(stored.id), deferred);
  assert.equal((await readAll(again.openBody(deferred))).toString(), body);
  assert.equal((await again.readHeaderBlock(deferred)).toString(), body, 'a header block without a blank line ends with the message, not in the envelope');

  await again.remove(stored.id);
  assert.deepEqual(await readdir(spool.queueDir), []);
});

test('what the message needs from an SMTP upstream (8BITMIME, SMTPUTF8 for its header fields) is in its envelope after a restart', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const stored = await spool.store(Readable.from([Buffer.from('Subject: Grüße\r\n\r\nbody\r\n')]), { ...record(newQueueId()), eightBit: true, utf8Headers: true });
  const { records } = await (await Spool.open(dir.path)).recover();
  assert.deepEqual(records, [stored]);
  assert.equal(records[0]!.eightBit, true);
  assert.equal(records[0]!.utf8Headers, true);
});

test('a queue in the two-file layout (<id>.eml body, <id>.json envelope) is taken over as it is', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  const body = Buffer.from('Subject: queued before the upgrade\r\n\r\nbody\r\n');
  const old = { ...record(newQueueId()), size: body.length };
  await writeFile(join(spool.queueDir, `${old.id}.eml`), body);
  await writeFile(join(spool.queueDir, `${old.id}.json`), serializeRecord(old));

  const { records, removed, corrupt } = await spool.recover();
  assert.deepEqual({ records, removed, corrupt }, { records: [old], removed: [], corrupt: [] });
  assert.ok((await readAll(spool.openBody(old))).equals(body));
  await spool.remove(old.id);
  assert.deepEqual(await readdir(spool.queueDir), []);
});

test('a large body (buffers reclaimed while it streams) is stored and read back byte for byte, whole and in ranges', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  // Several reclaim intervals, in chunks like a socket's, ending mid-interval.
  const chunks = Array.from({ length: 200 }, () => randomBytes(64 * 1024));
  const body = Buffer.concat(chunks);
  const stored = await spool.store(Readable.from(chunks), record(newQueueId()));

  assert.ok((await readAll(spool.openBody(stored))).equals(body), 'whole body');
  const start = 5 * 1024 * 1024 + 17;
  const end = 9 * 1024 * 1024 + 3;
  assert.ok((await readAll(spool.openBody(stored, { start, end }))).equals(body.subarray(start, end + 1)), 'range (end inclusive)');
});
