/**
 * fast-check arbitraries for SMTP sessions: real verbs with valid, tricky and random arguments, whole
 * transactions sent in lock-step, pipelined or in one write and cut off anywhere (mid-AUTH, mid-DATA),
 * bursts of commands, random bytes, very long lines, STARTTLS, and the way each session ends.
 */
import fc from 'fast-check';
import type { Ending, SessionPlan, Step } from './smtp-client.js';

const CRLF = '\r\n';
const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');
const b64 = (s: string): string => utf8(s).toString('base64');

/** Any code points, control characters (CR, LF, NUL) included. */
const text = (maxLength: number) => fc.string({ unit: 'binary', maxLength });
const run = (min: number, max: number) =>
  fc.tuple(fc.integer({ min, max }), fc.constantFrom('a', 'x', '.', ' ', '\u00e9')).map(([n, c]) => c.repeat(n));
const weighted = <T>(...options: [number, fc.Arbitrary<T>][]) => fc.oneof(...options.map(([weight, arbitrary]) => ({ weight, arbitrary })));

const domain = fc.constantFrom('example.com', 'example.org', 'sub.example.net', 'localhost', '[127.0.0.1]', '[IPv6:::1]', 'xn--bcher-kva.example', 'b\u00fccher.example');
const localPart = fc.oneof(fc.constantFrom('alice', 'bob', 'postmaster', 'a.b+tag', 'x'), fc.stringMatching(/^[a-z0-9][a-z0-9._+-]{0,23}$/));
const goodAddress = fc.tuple(localPart, domain).map(([l, d]) => `${l}@${d}`);
const badAddress = fc.oneof(
  fc.constantFrom(
    '', 'a@b@c', '@a:b@c', '@r1.example,@r2.example:b@c.example', 'a%b@c.example', 'a!b', 'host!user@c.example',
    '"a@b"@c.example', '"a%b"@c.example', '"quoted"@c.example', 'user@', '@example.com', 'user', 'a b@c.example',
    'a\u0000b@c.example', '<nested>@x.example', 'a@[999.1.1.1]', 'a@-bad-.example', '\u00fc\u00f1\u00ee@ex\u00e4mple.com',
  ),
  text(60),
  run(100, 20_000).map((l) => `${l}@example.com`),
);
const path = weighted([6, goodAddress.map((a) => `<${a}>`)], [1, fc.constant('<>')], [2, badAddress.map((a) => `<${a}>`)], [1, badAddress]);
const parameter = fc.oneof(
  fc.constantFrom(
    'SIZE=10', 'SIZE=65000', 'SIZE=999999999', 'SIZE=-1', 'SIZE=abc', 'BODY=8BITMIME', 'BODY=7BIT', 'BODY=BINARYMIME', 'SMTPUTF8',
    'RET=FULL', 'RET=HDRS', 'ENVID=abc', 'AUTH=<>', 'REQUIRETLS', 'NOTIFY=NEVER', 'NOTIFY=SUCCESS,FAILURE', 'ORCPT=rfc822;a@example.com', 'FOO=bar', '=',
  ),
  text(20),
);
const withParameters = (verbs: string[]) =>
  fc.tuple(fc.constantFrom(...verbs), path, fc.array(parameter, { maxLength: 3 })).map(([verb, p, ps]) => [verb + p, ...ps].join(' '));
const mailCommand = withParameters(['MAIL FROM:', 'MAIL FROM:', 'MAIL FROM:', 'mail from:', 'MAIL FROM: ', 'MAIL FROM', 'MAIL ', 'MAIL TO:']);
const rcptCommand = withParameters(['RCPT TO:', 'RCPT TO:', 'RCPT TO:', 'rcpt to:', 'RCPT TO: ', 'RCPT TO', 'RCPT ', 'RCPT FROM:']);
const validMail = weighted([6, goodAddress.map((a) => `MAIL FROM:<${a}>`)], [1, fc.constant('MAIL FROM:<>')]);
const validRcpt = goodAddress.map((a) => `RCPT TO:<${a}>`);

const hello = fc
  .tuple(
    fc.constantFrom('EHLO', 'EHLO', 'HELO', 'ehlo', 'LHLO'),
    weighted([5, fc.constantFrom('client.test', 'printer.local', '[127.0.0.1]', '[IPv6:::1]')], [1, fc.constant('')], [2, text(80)], [1, run(250, 2000)]),
  )
  .map(([verb, host]) => (host ? `${verb} ${host}` : verb));

/** AUTH exchanges as the lines a client sends; a session cut short after any of them is a mid-AUTH disconnect. */
export function authExchanges(user: string, password: string): fc.Arbitrary<string[]> {
  const valid = fc.constantFrom<string[]>(
    [`AUTH PLAIN ${b64(`\0${user}\0${password}`)}`],
    ['AUTH PLAIN', b64(`\0${user}\0${password}`)],
    ['AUTH LOGIN', b64(user), b64(password)],
    [`AUTH LOGIN ${b64(user)}`, b64(password)],
  );
  const credentials = fc.record({
    authzid: weighted([5, fc.constant('')], [1, fc.oneof(fc.constant(user), text(12))]),
    // Unknown names cost a full-strength scrypt (the dummy hash): kept rare so a run stays fast.
    user: weighted([8, fc.constant(user)], [1, fc.constantFrom('nobody', user.toUpperCase(), '__proto__', 'constructor', '')], [1, text(24)]),
    pass: weighted([4, fc.constant(password)], [3, text(24)], [1, run(1000, 12_000)]),
  });
  const plain = (c: { authzid: string; user: string; pass: string }) => b64(`${c.authzid}\0${c.user}\0${c.pass}`);
  return weighted<string[]>(
    [4, valid],
    [1, credentials.map((c) => [`AUTH PLAIN ${plain(c)}`])],
    [1, credentials.map((c) => ['AUTH PLAIN', plain(c)])],
    [1, credentials.map((c) => ['AUTH LOGIN', b64(c.user), b64(c.pass)])],
    [1, credentials.map((c) => [`AUTH LOGIN ${b64(c.user)}`, b64(c.pass)])],
    [1, fc.constantFrom<string[]>(
      ['AUTH'], ['AUTH CRAM-MD5'], ['AUTH XOAUTH2 dXNlcj1h'], ['AUTH PLAIN ='], ['AUTH PLAIN !!notbase64!!'], ['AUTH LOGIN', '*'],
      ['AUTH PLAIN', '*'], ['AUTH GSSAPI'], ['AUTH LOGIN', '', ''], ['AUTH PLAIN', ''], ['AUTH LOGIN', 'DATA', 'QUIT'],
    )],
    [1, text(40).map((s) => [`AUTH ${s}`])],
  );
}

const misc = fc.oneof(
  fc.constantFrom(
    'RSET', 'NOOP', 'NOOP hello', 'QUIT', 'STARTTLS', 'STARTTLS now', 'VRFY postmaster', 'VRFY', 'EXPN staff', 'HELP', 'HELP MAIL', 'DATA',
    'BDAT 5 LAST', 'XCLIENT ADDR=10.0.0.1', 'XFORWARD NAME=x', 'TURN', 'ETRN example.com', 'GET / HTTP/1.1', 'POST /x HTTP/1.0', '', ' ',
    '.', 'MAIL', 'RCPT', 'RCPT TO:', 'MAIL FROM:', 'RSET now', 'SEND FROM:<a@b.example>', 'SAML FROM:<a@b.example>',
  ),
  fc.tuple(fc.constantFrom('VRFY', 'EXPN', 'NOOP', 'HELP', 'RSET', 'DATA', 'EHLO', 'STARTTLS'), text(40)).map(([v, a]) => `${v} ${a}`),
  text(60),
);

function anyCommand(auth: fc.Arbitrary<string[]>): fc.Arbitrary<string> {
  return weighted([2, hello], [3, mailCommand], [3, rcptCommand], [3, misc], [1, auth.map((lines) => lines.join(CRLF))]);
}

const bodyLine = weighted(
  [
    4,
    fc.constantFrom(
      'Subject: fuzz', 'From: <a@example.com>', 'To: b@example.com', 'Message-ID: <fuzz@example.com>', 'Message-ID:',
      'Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000', ' folded continuation', '\tfolded', '', '', '.', '..', '. ', '.x',
      ':no-name', 'X-\u00e9: 8bit', 'MAIL FROM:<evil@x.example>', 'RCPT TO:<victim@x.example>', 'DATA', 'QUIT',
    ),
  ],
  [3, text(120)],
  [1, run(1000, 100_000)],
);
const lineEnd = fc.constantFrom(CRLF, CRLF, CRLF, CRLF, '\n', '\r');
const content: fc.Arbitrary<Buffer> = weighted(
  [6, fc.array(fc.tuple(bodyLine, lineEnd), { maxLength: 25 }).map((lines) => utf8(lines.map(([l, e]) => l + e).join('')))],
  [1, fc.integer({ min: 28, max: 34 }).map((n) => utf8(`${'Received: from hop by hop; Mon, 1 Jan 2024 00:00:00 +0000\r\n'.repeat(n)}Subject: loop\r\n\r\nbody\r\n`))],
  [1, fc.integer({ min: 60, max: 200 }).map((kb) => utf8(`Subject: big\r\n\r\n${`${'z'.repeat(998)}\r\n`.repeat(kb)}`))],
  [1, fc.uint8Array({ maxLength: 3000 }).map((b) => Buffer.from(b))],
);

/** Terminates data with <CRLF>.<CRLF> whether or not it ends with a line break. */
function terminated(data: Buffer): Buffer {
  const endsWithCrlf = data.length === 0 || data.subarray(-2).equals(Buffer.from(CRLF));
  return Buffer.concat([data, Buffer.from(endsWithCrlf ? `.${CRLF}` : `${CRLF}.${CRLF}`)]);
}

const write = (data: Buffer | string, wait = true): Step => ({ kind: 'write', data: typeof data === 'string' ? utf8(data) : data, splits: [], wait });
const lines = (ls: string[]): string => ls.map((l) => l + CRLF).join('');

/** What a listener asks of a client before MAIL: transactions lean towards it, so that many get through. */
export interface ListenerTraits {
  name: string;
  starttls: boolean;
  authRequired: boolean;
}

const often = <T>(likely: T, other: T, odds: number) => weighted([odds, fc.constant(likely)], [1, fc.constant(other)]);

/** A mail transaction, sent in one of three styles and possibly cut short after any step. */
function transaction(listener: ListenerTraits, auth: fc.Arbitrary<string[]>): fc.Arbitrary<Step[]> {
  return fc
    .record({
      starttls: listener.starttls ? often(true, false, 4) : often(false, true, 6),
      hello: weighted<string | undefined>([5, fc.constant('EHLO client.test')], [1, hello], [1, fc.constant(undefined)]),
      auth: listener.authRequired ? weighted<string[] | undefined>([1, fc.constant(undefined)], [6, auth]) : weighted<string[] | undefined>([3, fc.constant(undefined)], [1, auth]),
      mail: weighted([5, validMail], [1, mailCommand]),
      rcpts: fc.array(weighted([5, validRcpt], [1, rcptCommand]), { minLength: 1, maxLength: 7 }),
      data: fc.constantFrom('DATA', 'DATA', 'DATA', 'data', 'DATA extra'),
      content,
      terminate: often(true, false, 8),
      style: fc.constantFrom('lock-step', 'pipelined', 'one write'),
      cut: weighted<number | undefined>([3, fc.constant(undefined)], [1, fc.nat()]),
    })
    .map((t) => {
      const opening = [...(t.hello ? [t.hello] : []), ...(t.auth ?? [])];
      const envelope = [t.mail, ...t.rcpts, t.data];
      const message = t.terminate ? terminated(t.content) : t.content;
      let steps: Step[];
      if (t.style === 'lock-step') steps = [...opening, ...envelope].map((l) => write(l + CRLF)).concat(write(message));
      else if (t.style === 'pipelined') steps = [...opening.map((l) => write(l + CRLF)), write(lines(envelope)), write(message)];
      else steps = [write(Buffer.concat([utf8(lines([...opening, ...envelope])), message]))];
      if (t.starttls) steps = [write(`EHLO client.test${CRLF}`), { kind: 'starttls' }, ...steps];
      return t.cut === undefined ? steps : steps.slice(0, t.cut % (steps.length + 1));
    });
}

function segment(listener: ListenerTraits, auth: fc.Arbitrary<string[]>): fc.Arbitrary<Step[]> {
  const command = anyCommand(auth);
  return weighted<Step[]>(
    [8, transaction(listener, auth)],
    [3, command.map((c) => [write(c + CRLF)])],
    [1, auth.map((ls) => ls.map((l) => write(l + CRLF)))],
    [2, fc.array(command, { minLength: 2, maxLength: 150 }).map((cs) => [write(lines(cs))])],
    [1, fc.uint8Array({ minLength: 1, maxLength: 4096 }).map((b) => [write(Buffer.from(b))])],
    [
      1,
      fc
        .tuple(fc.constantFrom('', 'NOOP ', 'MAIL FROM:<', 'EHLO ', 'AUTH PLAIN ', 'RCPT TO:<'), fc.integer({ min: 1000, max: 100_000 }), fc.boolean())
        .map(([prefix, n, eol]) => [write(prefix + 'a'.repeat(n) + (eol ? CRLF : ''))]),
    ],
    [1, fc.constant<Step[]>([{ kind: 'starttls' }])],
  );
}

/** One session: a few segments, some split into several writes, some written without waiting for replies. */
export function sessionPlan(listeners: ListenerTraits[], user: string, password: string): fc.Arbitrary<SessionPlan> {
  const auth = authExchanges(user, password);
  return fc.constantFrom(...listeners).chain((listener) => {
    const shaped = fc.tuple(segment(listener, auth), fc.array(fc.nat(), { maxLength: 3 }), fc.nat(9)).map(([steps, splits, n]) =>
      steps.map((s) => (s.kind === 'write' ? { ...s, splits, wait: s.wait && n !== 0 } : s)),
    );
    return fc
      .record({
        listener: fc.constant(listener.name),
        from: often('127.0.0.1', '127.0.0.2', 2),
        early: weighted<Buffer | undefined>([19, fc.constant(undefined)], [1, fc.constantFrom('EHLO hasty.test\r\n', 'MAIL FROM:<a@b.example>\r\n', 'x').map(utf8)]),
        steps: fc.array(shaped, { minLength: 1, maxLength: 5 }).map((segments) => segments.flat()),
        ending: fc.constantFrom<Ending>('quit', 'quit', 'end', 'destroy', 'reset'),
      })
      .map(withSummary);
  });
}

/** How fast-check prints a plan in a failure report: each write shortened, so 100 KB lines stay readable. */
function withSummary(plan: SessionPlan): SessionPlan {
  const show = (b: Buffer) => JSON.stringify(b.length > 120 ? `${b.toString('latin1', 0, 100)}...(${b.length} bytes)` : b.toString('latin1'));
  const steps = plan.steps.map((s) => (s.kind === 'starttls' ? 'STARTTLS+handshake' : `${show(s.data)}${s.splits.length ? ` split at ${s.splits.join(',')}` : ''}${s.wait ? '' : ' (no wait)'}`));
  const text = `{ ${plan.listener} from ${plan.from}${plan.early ? `, early ${show(plan.early)}` : ''}, steps [${steps.join(', ')}], ending ${plan.ending} }`;
  return Object.assign(plan, { [fc.toStringMethod]: () => text });
}
