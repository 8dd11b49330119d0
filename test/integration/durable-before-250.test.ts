/**
 * "250 means the message is on disk", seen from the kernel's side: strace follows the daemon while a real client
 * sends one message, and the order of the system calls shows the message file marked complete and fsync'ed,
 * and a sync of the queue directory begun after the file was created and finished, all before the 250 is written
 * to the client's socket. Skipped where strace is not installed (.ci/run installs it).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { spawnDaemon, tempDir, testConfig } from '../helpers/daemon.js';

const strace = spawnSync('strace', ['-V']).status === 0;

/** One system call as strace -f reports it: from its start line to its completion (a later "resumed" line for a call another thread interrupted). */
interface Call {
  name: string;
  /** The line of its first argument onward, e.g. `5</tmp/x/queue/ID.msg>, 0700`. */
  args: string;
  start: number;
  end: number;
  /** What it returned: "0", or "-1 EIO (Input/output error)". */
  result?: string;
}

function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const open = new Map<string, Call>();
  text.split('\n').forEach((line, index) => {
    const resumed = /^(\d+) +<\.\.\. (\w+) resumed>/.exec(line);
    if (resumed) {
      const call = open.get(`${resumed[1]} ${resumed[2]}`);
      if (call) (call.end = index), (call.result = resultOf(line)), open.delete(`${resumed[1]} ${resumed[2]}`);
      return;
    }
    const started = /^(\d+) +(\w+)\((.*)$/.exec(line);
    if (!started) return;
    const call: Call = { name: started[2]!, args: started[3]!, start: index, end: index, result: resultOf(line) };
    calls.push(call);
    if (line.endsWith('<unfinished ...>')) open.set(`${started[1]} ${call.name}`, call);
  });
  return calls;
}

function resultOf(line: string): string | undefined {
  return /\) += (.*)$/.exec(line)?.[1];
}

test('the 250 is written only after the message file is complete and fsync\'ed and its directory synced', { skip: strace ? false : 'strace is not installed' }, async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const traceFile = join(dir.path, 'trace');
  const config = await testConfig({ dir: dir.path, retry: { initialDelay: '1h' } });
  // -y: the path behind each descriptor; -f: fsyncs run on libuv's threads; -s: enough of the reply to see its queue ID.
  const child = await spawnDaemon(config, dir.path, [], ['strace', '-f', '-y', '-s', '64', '-o', traceFile, '-e', 'trace=openat,fchmod,fsync,fdatasync,write,writev']);
  // SIGKILL ends strace and, with it, the daemon it traces.
  t.after(() => (child.proc.exitCode === null ? child.proc.kill('SIGKILL') : undefined));

  const relayPort = (config.listeners as { port: number }[])[0]!.port;
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relayPort, secure: false, ignoreTLS: true });
  const info = await client.sendMail({ envelope: { from: 'app@origin.test', to: ['user@dest.test'] }, raw: 'Subject: durable\r\n\r\nbody\r\n' });
  client.close();
  const id = /queued as ([0-9A-Z]{22})$/.exec(info.response)?.[1];
  assert.ok(id, info.response);
  // strace passes no SIGTERM on: the daemon, strace's child, gets it; strace ends with it.
  const daemonPid = Number((await readFile(`/proc/${child.proc.pid}/task/${child.proc.pid}/children`, 'utf8')).trim().split(' ')[0]);
  assert.ok(daemonPid > 0, 'the daemon runs under strace');
  process.kill(daemonPid, 'SIGTERM');
  await child.exited;

  const calls = parseTrace(await readFile(traceFile, 'utf8'));
  const queueDir = join(dir.path, 'spool', 'queue');
  const file = join(queueDir, `${id}.msg`);
  const created = calls.find((c) => c.name === 'openat' && c.args.includes(`"${file}"`) && c.args.includes('O_CREAT'));
  const completed = calls.find((c) => c.name === 'fchmod' && c.args.includes(`<${file}>, 0700`));
  const fileSynced = calls.find((c) => c.name === 'fsync' && c.args.includes(`<${file}>`));
  const reply = calls.find((c) => (c.name === 'write' || c.name === 'writev') && c.args.includes(`250 2.0.0 Ok: queued as ${id}`));
  assert.ok(created && completed && fileSynced && reply, `calls found: ${JSON.stringify({ created, completed, fileSynced, reply })}`);
  const dirSynced = calls.find((c) => c.name === 'fsync' && c.args.includes(`<${queueDir}>`) && c.start > created.end);
  assert.ok(dirSynced, 'a sync of the queue directory begun after the file was created');

  assert.ok(completed.end < fileSynced.start, 'marked complete before the fsync that makes the mark durable');
  assert.ok(fileSynced.end < reply.start, 'the file fsync finished before the 250');
  assert.ok(dirSynced.end < reply.start, 'the directory sync finished before the 250');
  assert.deepEqual([completed.result, fileSynced.result, dirSynced.result], ['0', '0', '0'], 'each succeeded');
});

