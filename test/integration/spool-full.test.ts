/**
 * A full spool disk must never produce a false 250: the client hears 451 4.3.0, nothing half-written is
 * left or delivered, and accepting resumes by itself once space is back. The disk is a real 1 MiB tmpfs
 * (mounting needs root; the test skips without it).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { startSink, type Sink } from '../helpers/sink.js';
import { startInProcess, tempDir, testConfig, type InProcessDaemon } from '../helpers/daemon.js';

const run = promisify(execFile);

let sink: Sink;
let relay: InProcessDaemon | undefined;
let dir: Awaited<ReturnType<typeof tempDir>>;
let mountPoint: string;
let mounted = false;

before(async () => {
  dir = await tempDir();
  mountPoint = join(dir.path, 'disk');
  await mkdir(mountPoint);
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mountPoint]);
    mounted = true;
  } catch {
    return;
  }
  sink = await startSink();
  const config = await testConfig({ dir: dir.path, upstreams: { sink: { type: 'smtp', host: '127.0.0.1', port: sink.port, security: 'none' } } });
  config.spool = { dir: join(mountPoint, 'spool') };
  relay = await startInProcess(config);
});

after(async () => {
  await relay?.stop();
  await sink?.close();
  if (mounted) await run('umount', [mountPoint]);
  await dir.remove();
});

function message(id: string, size: number): string {
  return `Subject: ${id}\r\nMessage-ID: <${id}@test>\r\n\r\n${'x'.repeat(76).concat('\r\n').repeat(Math.ceil(size / 78))}`;
}

test('with the spool disk full the client gets 451 4.3.0, nothing is left behind, and accepting resumes when space returns', async (t) => {
  if (!mounted) return t.skip('mounting a tmpfs needs root');
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay!.port('relay'), secure: false, ignoreTLS: true });
  const envelope = { from: 'printer@example.com', to: ['office@example.com'] };

  const ballast = join(mountPoint, 'ballast');
  await writeFile(ballast, Buffer.alloc(1024 * 1024 - 64 * 1024)).catch(() => {}); // fills the disk up to its limit
  await assert.rejects(client.sendMail({ envelope, raw: message('too-big-for-disk', 200_000) }), (err: { responseCode?: number; response?: string }) => {
    assert.equal(err.responseCode, 451);
    assert.match(err.response ?? '', /^451 4\.3\.0 /);
    return true;
  });
  const spool = join(mountPoint, 'spool');
  assert.deepEqual(await readdir(join(spool, 'incoming')), [], 'no temporary file left');
  assert.deepEqual(await readdir(join(spool, 'queue')), [], 'nothing queued');

  await rm(ballast);
  const info = await client.sendMail({ envelope, raw: message('after-space-returned', 200_000) });
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as/);
  const [delivered] = await sink.waitForMessages(1);
  assert.match(delivered!.raw.toString(), /Message-ID: <after-space-returned@test>/);
  assert.equal(sink.messages.filter((m) => m.raw.includes('too-big-for-disk')).length, 0, 'the refused message was never delivered');
  client.close();
});
