/**
 * The floor of smarthost's stack, for `npm run bench -- --floor`: the same libraries and the same durable
 * work per message, and nothing else. smtp-server accepts (no policy, no Received field, no header parsing),
 * each message goes to its own file, written and fsync'ed with its directory (smarthost's DirSync), before
 * the 250; nodemailer's pool relays it byte for byte through the transport API smarthost uses, and the file
 * is unlinked. No envelope record, no completion mark, no scheduler, metrics or logs, and nothing survives a
 * restart. What smarthost spends beyond this relay is the price of its features; what this relay spends is
 * what no change inside smarthost can remove.
 *
 * Run directly: `node dist/bench/floor-relay.js --port P --upstream-port S --dir D`; SIGTERM stops it.
 */
import { close, createReadStream, fsync, open, unlink, write } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { DirSync } from '../src/spool/dir-sync.js';

const openFile = promisify(open);
const writeFile = promisify(write);
const fsyncFile = promisify(fsync);
const closeFile = promisify(close);
const unlinkFile = promisify(unlink);

const { values } = parseArgs({ options: { port: { type: 'string' }, 'upstream-port': { type: 'string' }, dir: { type: 'string' } } });
if (!values.port || !values['upstream-port'] || !values.dir) throw new Error('usage: floor-relay.js --port P --upstream-port S --dir D');
const dir = values.dir;
await mkdir(dir, { recursive: true });
const dirSync = new DirSync(dir);
const transport = nodemailer.createTransport({ host: '127.0.0.1', port: Number(values['upstream-port']), secure: false, ignoreTLS: true, pool: true, maxConnections: 20, maxMessages: Infinity });
let sequence = 0;
let failures = 0;

async function store(path: string, stream: AsyncIterable<Buffer>): Promise<void> {
  const fd = await openFile(path, 'wx', 0o600);
  try {
    const named = dirSync.sync();
    for await (const chunk of stream) {
      for (let offset = 0; offset < chunk.length; ) offset += (await writeFile(fd, chunk, offset)).bytesWritten;
    }
    await Promise.all([fsyncFile(fd), named]);
  } finally {
    await closeFile(fd);
  }
}

function relay(path: string, envelope: { from: string; to: string[] }): void {
  const mail = {
    data: { envelope },
    message: {
      getEnvelope: () => ({ from: envelope.from, to: [...envelope.to] }),
      messageId: () => '<floor@bench>',
      getHeader: () => undefined,
      createReadStream: () => createReadStream(path, { highWaterMark: 256 * 1024 }),
    },
  };
  (transport.transporter as unknown as { send(mail: unknown, cb: (err: Error | null) => void): void }).send(mail, (err) => {
    if (!err) void unlinkFile(path).catch(() => {});
    else if (failures++ === 0) console.error(`floor relay: ${err.message}`);
  });
}

const server = new SMTPServer({
  disabledCommands: ['AUTH', 'STARTTLS'],
  authOptional: true,
  logger: false,
  size: 200 * 1024 * 1024,
  onData(stream, session, callback) {
    const path = join(dir, `${process.pid}-${sequence++}.msg`);
    // Read before the callback: smtp-server starts the next transaction, with an empty envelope, inside it.
    const envelope = { from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', to: session.envelope.rcptTo.map((r) => r.address) };
    store(path, stream).then(
      () => {
        callback(null, 'Ok: queued');
        relay(path, envelope);
      },
      (err: Error) => callback(Object.assign(new Error(`could not queue: ${err.message}`), { responseCode: 451 })),
    );
  },
});
server.listen(Number(values.port), '127.0.0.1');
process.once('SIGTERM', () => {
  server.close(() => {
    transport.close();
    process.exit(failures > 0 ? 1 : 0);
  });
});
