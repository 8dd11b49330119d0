/**
 * The Exchange Online reply table, one test per row: what smarthost does with each reply (defer, alert,
 * bounce), and that the explanation names the fix.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseReply, SmtpError } from '../../src/smtp-error.js';
import { classifyExchangeReply, EXCHANGE_REPLIES, type ExchangeLogin } from '../../src/upstreams/m365/exchange-replies.js';

function error(reply: string): SmtpError {
  const parsed = parseReply(reply)!;
  return new SmtpError(parsed.code, parsed.enhanced!, parsed.text);
}

const cases: { reply: string; login?: ExchangeLogin; action: 'defer' | 'alert' | 'bounce'; code: number; explains: RegExp }[] = [
  { reply: '432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded', action: 'defer', code: 432, explains: /concurrent connection.*at most 3/ },
  {
    reply: '554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception',
    action: 'defer',
    code: 451,
    explains: /sending limit.*not bounced/,
  },
  { reply: '550 5.2.251 Sender throttled due to continuous mailbox full errors', action: 'defer', code: 451, explains: /throttles this mailbox after continuous errors/ },
  { reply: '550 5.2.253 Sender throttled due to continuous invalid license errors', action: 'defer', code: 451, explains: /continuous errors/ },
  { reply: '550 5.2.255 Sender throttled due to continuous invalid recipients errors', action: 'defer', code: 451, explains: /continuous errors/ },
  { reply: '550 5.7.30 Basic authentication is not supported for Client Submission.', action: 'alert', code: 451, explains: /Basic authentication.*legacyBasicAuth by an app/ },
  {
    reply: '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.',
    action: 'alert',
    code: 451,
    explains: /Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled \$false/,
  },
  { reply: '535 5.7.3 Authentication unsuccessful [SN4PR0201CA0042]', action: 'alert', code: 451, explains: /SMTP\.SendAsApp.*New-ServicePrincipal.*Add-MailboxPermission/ },
  { reply: '535 5.7.3 Authentication unsuccessful [SN4PR0201CA0042]', login: 'app', action: 'alert', code: 451, explains: /SMTP\.SendAsApp.*New-ServicePrincipal.*Add-MailboxPermission/ },
  {
    reply: '535 5.7.3 Authentication unsuccessful',
    login: 'legacyBasicAuth',
    action: 'alert',
    code: 451,
    explains: /mailbox's password \(legacyBasicAuth\).*app password.*MFA.*Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled \$false.*end of December 2026.*OAuth/,
  },
  { reply: '530 5.7.57 Client not authenticated to send mail.', action: 'alert', code: 451, explains: /authenticated client/ },
  { reply: '550 5.7.60 SMTP; Client does not have permissions to send as this sender', action: 'bounce', code: 550, explains: /SendAs/ },
  { reply: '550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization', action: 'bounce', code: 550, explains: /RejectDirectSend.*inbound connector/ },
];

for (const c of cases) {
  test(`Exchange reply ${c.reply.slice(0, 13)}${c.login ? ` (login: ${c.login})` : ''}: ${c.action}`, () => {
    const result = classifyExchangeReply(error(c.reply), c.login);
    assert.equal(result.row?.action, c.action);
    assert.equal(result.error.code, c.code);
    assert.equal(result.error.temporary, c.action !== 'bounce', c.action === 'bounce' ? 'bounced' : 'deferred, never bounced');
    assert.equal(result.error.enhanced.slice(2), error(c.reply).enhanced.slice(2), 'the enhanced code keeps its subject and detail');
    assert.match(result.error.message, c.explains);
    assert.ok(result.error.reply.includes(error(c.reply).message.slice(0, 20)), 'the reply Exchange gave stays readable');
    if (c.action === 'alert') assert.match(result.alert ?? '', c.explains);
    else assert.equal(result.alert, undefined);
  });
}

test('every row of the table is covered by a case above', () => {
  for (const row of EXCHANGE_REPLIES) {
    assert.ok(
      cases.some((c) => classifyExchangeReply(error(c.reply), c.login).row === row),
      `row ${String(row.pattern)}${row.login ? ` (login: ${row.login})` : ''} has no test`,
    );
  }
});

test('a reply no row knows keeps its meaning: 5xx bounces, 4xx defers, unchanged', () => {
  const permanent = classifyExchangeReply(error('550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found'));
  assert.equal(permanent.row, undefined);
  assert.equal(permanent.error.reply, '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found');
  const temporary = classifyExchangeReply(error('451 4.7.500 Server busy. Please try again later'));
  assert.equal(temporary.error.temporary, true);
  assert.equal(temporary.row, undefined);
});

test('5.7.3 inside another code (5.7.30, 5.7.139) is never read as 5.7.3', () => {
  assert.match(classifyExchangeReply(error('550 5.7.30 Basic authentication is not supported')).error.message, /Basic authentication/);
  assert.match(classifyExchangeReply(error('535 5.7.139 Authentication unsuccessful')).error.message, /Set-CASMailbox/);
});

test('a refused password (legacyBasicAuth) is never explained with the app setup, nor a refused app with the password', () => {
  const refused = error('535 5.7.3 Authentication unsuccessful');
  assert.doesNotMatch(classifyExchangeReply(refused, 'legacyBasicAuth').error.message, /SMTP\.SendAsApp|New-ServicePrincipal/);
  assert.doesNotMatch(classifyExchangeReply(refused, 'app').error.message, /legacyBasicAuth|password/);
});
