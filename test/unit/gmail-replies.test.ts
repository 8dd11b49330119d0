/**
 * The Gmail reply table, one test per documented reply: a daily sending limit defers (4xx) and alerts,
 * never bounces; other replies keep their meaning.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseReply, SmtpError } from '../../src/smtp-error.js';
import { classifyGmailReply, GMAIL_REPLIES } from '../../src/upstreams/google/gmail-replies.js';

function error(reply: string): SmtpError {
  const parsed = parseReply(reply)!;
  return new SmtpError(parsed.code, parsed.enhanced!, parsed.text);
}

// As listed in "Gmail SMTP errors and codes" (https://support.google.com/a/answer/3726730).
const cases: { reply: string; explains: RegExp }[] = [
  {
    reply: '550 5.4.5 Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852 - gsmtp',
    explains: /mailbox reached its daily sending limit; it lifts within 24 hours/,
  },
  {
    reply: '550 5.4.5 Daily SMTP relay limit exceeded for user. For more information on SMTP relay sending limits please contact your administrator - gsmtp',
    explains: /daily SMTP relay limit is reached; it lifts within 24 hours/,
  },
  { reply: '550 5.7.1 Daily SMTP relay limit exceeded for customer. - gsmtp', explains: /daily SMTP relay limit/ },
];

for (const c of cases) {
  test(`Gmail reply "${c.reply.slice(0, 45)}" defers with an alert, never bounces`, () => {
    const result = classifyGmailReply(error(c.reply));
    assert.equal(result.row?.action, 'alert');
    assert.equal(result.error.code, 451);
    assert.equal(result.error.temporary, true, 'deferred, never bounced');
    assert.equal(result.error.enhanced, `4${error(c.reply).enhanced.slice(1)}`, 'the enhanced code keeps its subject and detail');
    assert.match(result.error.message, c.explains);
    assert.ok(result.error.reply.includes(`Gmail said: ${c.reply.slice(0, 40)}`), 'the reply Gmail gave stays readable');
    assert.match(result.alert ?? '', c.explains);
  });
}

test('every row of the Gmail table is covered by a case above', () => {
  for (const row of GMAIL_REPLIES) assert.ok(cases.some((c) => classifyGmailReply(error(c.reply)).row === row), `row ${String(row.pattern)} has no test`);
});

test('a Gmail reply no row knows keeps its meaning: 5xx bounces, 4xx defers, unchanged', () => {
  const unknownUser = classifyGmailReply(error('550 5.1.1 The email account that you tried to reach does not exist. - gsmtp'));
  assert.equal(unknownUser.row, undefined);
  assert.equal(unknownUser.error.code, 550);
  const policy = classifyGmailReply(error('550 5.7.1 This message violates example.com email policy. - gcdp <sessionid> - gsmtp'));
  assert.equal(policy.row, undefined, 'another 5.7.1 is no relay limit');
  assert.equal(policy.error.code, 550);
  const busy = classifyGmailReply(error('421 4.7.0 Temporary System Problem. Try again later. - gsmtp'));
  assert.equal(busy.row, undefined);
  assert.equal(busy.error.temporary, true);
});
