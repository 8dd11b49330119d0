/**
 * A message body the spool cannot read fails its stream with MessageUnreadable, the error the delivery tells
 * from a reader's own: a message file cut short (through the descriptor kept open after store, as by path), one
 * removed, and one replaced by a directory.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, truncate, unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { buffer as readAll } from 'node:stream/consumers';
import { newQueueId } from '../../src/spool/queue-id.js';
import { createRecord } from '../../src/spool/record.js';
import { Spool } from '../../src/spool/spool.js';
import { MessageUnreadable } from '../../src/spool/unreadable.js';
import { tempDir } from '../helpers/daemon.js';

async function stored(t: TestContext) {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const spool = await Spool.open(dir.path);
  t.after(() => spool.close());
  const body = randomBytes(200 * 1024);
  const record = await spool.store(
    Readable.from([body]),
    createRecord({ id: newQueueId(), sender: 'app@origin.test', recipients: ['user@dest.test'], receivedAt: Date.now(), client: { address: '127.0.0.1', listener: 'relay', tls: false } }),
  );
  return { spool, record, body };
}

/** The error the stream fails with; fails the test when it ends instead. */
function readFailure(stream: Readable): Promise<unknown> {
  return readAll(stream).then(
    () => assert.fail('the stream ended without an error'),
    (err: unknown) => err,
  );
}

test('a message file cut short fails the stream, read through the kept descriptor or by path, instead of ending early', async (t) => {
  const { spool, record } = await stored(t);
  await truncate(spool.messagePath(record.id), 100_000);
  const kept = await readFailure(spool.openBody(record, { chunkSize: 64 * 1024 }));
  assert.ok(kept instanceof MessageUnreadable, String(kept));
  assert.equal(kept.message, `queued message could not be read: the message file ended at byte 100000, before the size its envelope gives`);

  await spool.release(record.id);
  const byPath = await readFailure(spool.openBody(record));
  assert.ok(byPath instanceof MessageUnreadable, String(byPath));
  assert.match(byPath.message, /ended at byte 100000/);
});

test('a message file removed or replaced by a directory fails the stream with the system error code', async (t) => {
  const { spool, record, body } = await stored(t);
  await spool.release(record.id);
  assert.ok((await readAll(spool.openBody(record))).equals(body), 'intact, it reads');

  await unlink(spool.messagePath(record.id));
  const removed = await readFailure(spool.openBody(record));
  assert.ok(removed instanceof MessageUnreadable, String(removed));
  assert.match(removed.message, /^queued message could not be read: ENOENT: no such file or directory, open '.*\.msg'$/);

  await mkdir(spool.messagePath(record.id));
  const directory = await readFailure(spool.openBody(record));
  assert.ok(directory instanceof MessageUnreadable, String(directory));
  assert.equal(directory.message, 'queued message could not be read: EISDIR: illegal operation on a directory, read');
});
