/**
 * Mailjet's answers as queue decisions, from the table: account and credential errors defer (and alert),
 * content errors bounce with Mailjet's text, 429 and 5xx defer (with Retry-After), other 4xx bounce.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { byHttpStatus, classifyMailjetError, ERROR_TABLE, parseRetryAfter, relatedRecipient } from '../../src/upstreams/mailjet/errors.js';

/**
 * Every ErrorCode of the "Send API errors" table in https://dev.mailjet.com/email/guides/send-api-v31/ with
 * the StatusCode the table gives it. A code Mailjet documents must have a row, so it is never classified by
 * accident.
 */
const DOCUMENTED: Record<string, number> = {
  'send-0003': 400, 'send-0004': 400, 'send-0006': 403, 'send-0007': 403, 'send-0008': 403, 'send-0010': 400, 'send-0011': 400,
  'send-0012': 400, 'send-0015': 400, 'send-0016': 400, 'mj-0001': 401, 'mj-0002': 400, 'mj-0003': 400, 'mj-0004': 400, 'mj-0005': 400,
  'mj-0006': 400, 'mj-0007': 400, 'mj-0008': 400, 'mj-0011': 400, 'mj-0012': 400, 'mj-0013': 400, 'mj-0015': 401,
};

test('every documented Send API error code has a row in the table', () => {
  assert.deepEqual(Object.keys(DOCUMENTED).filter((code) => !Object.hasOwn(ERROR_TABLE, code)), []);
  for (const [code, row] of Object.entries(ERROR_TABLE)) {
    assert.match(row.enhanced, new RegExp(`^${String(row.code)[0]}\\.\\d+\\.\\d+$`), `${code}: enhanced code matches the reply class`);
  }
});

test('credential errors (mj-0015, mj-0001) defer with 4.7.0 and alert; they are never the message\'s fault', () => {
  for (const code of ['mj-0015', 'mj-0001']) {
    const { error, alert } = classifyMailjetError({ ErrorCode: code, StatusCode: 401, ErrorMessage: 'API key authentication failure' });
    assert.equal(error.temporary, true, code);
    assert.equal(error.enhanced, '4.7.0');
    assert.equal(alert, true);
    assert.match(error.message, new RegExp(`${code} API key authentication failure`));
  }
});

test('content errors bounce with Mailjet\'s own text', () => {
  const { error, alert } = classifyMailjetError({ ErrorCode: 'send-0003', StatusCode: 400, ErrorMessage: 'At least "HTMLPart", "TextPart" or "TemplateID" must be provided.', ErrorRelatedTo: ['HTMLPart', 'TextPart'] });
  assert.equal(error.reply, '550 5.6.0 Mailjet refused the message: it has no text or HTML part: send-0003 At least "HTMLPart", "TextPart" or "TemplateID" must be provided. (HTMLPart, TextPart)');
  assert.equal(alert, false);
  assert.equal(classifyMailjetError({ ErrorCode: 'send-0015', StatusCode: 400, ErrorMessage: 'too many' }).error.enhanced, '5.5.3');
  assert.equal(classifyMailjetError({ ErrorCode: 'mj-0011', StatusCode: 400, ErrorMessage: 'too big' }).error.code, 552);
});

test('an unauthorized From bounces 5.7.1 and alerts; an invalid From address is the sender\'s 5.1.7, an invalid recipient 5.1.3', () => {
  const sender = classifyMailjetError({ ErrorCode: 'send-0008', StatusCode: 403, ErrorMessage: '"x@y" is not an authorized sender email address for your account.', ErrorRelatedTo: ['From'] });
  assert.deepEqual([sender.error.code, sender.error.enhanced, sender.alert], [550, '5.7.1', true]);
  assert.equal(classifyMailjetError({ ErrorCode: 'mj-0013', StatusCode: 400, ErrorMessage: 'invalid', ErrorRelatedTo: ['From.Email'] }).error.enhanced, '5.1.7');
  assert.equal(classifyMailjetError({ ErrorCode: 'mj-0013', StatusCode: 400, ErrorMessage: 'invalid', ErrorRelatedTo: ['To[2].Email'] }).error.enhanced, '5.1.3');
});

test('a payload smarthost built wrongly (mj-0002, send-0011) defers and alerts instead of bouncing', () => {
  for (const code of ['mj-0002', 'send-0011']) {
    const { error, alert } = classifyMailjetError({ ErrorCode: code, StatusCode: 400, ErrorMessage: 'x' });
    assert.deepEqual([error.temporary, alert], [true, true], code);
  }
});

test('an unknown error code is classified by its StatusCode: 429 and 5xx defer, 401/403 defer and alert, other 4xx bounce', () => {
  const cases: [number, boolean, boolean][] = [
    [429, true, false],
    [500, true, false],
    [503, true, false],
    [401, true, true],
    [403, true, true],
    [400, false, false],
    [422, false, false],
  ];
  for (const [status, temporary, alert] of cases) {
    const classified = classifyMailjetError({ ErrorCode: 'mj-9999', StatusCode: status, ErrorMessage: 'new error' });
    assert.deepEqual([classified.error.temporary, classified.alert], [temporary, alert], `HTTP ${status}`);
  }
  assert.equal(classifyMailjetError({ ErrorMessage: 'no code at all' }).error.temporary, true, 'an unreadable error defers');
});

test('HTTP answers without per-message results: 429 and 503 carry Retry-After, other 4xx bounce', () => {
  const limited = byHttpStatus(429, 'slow down', undefined, { retryAfterMs: 30_000 }).error;
  assert.deepEqual([limited.code, limited.enhanced, limited.retryAfterMs], [451, '4.7.0', 30_000]);
  assert.equal(byHttpStatus(503, 'maintenance', undefined, { retryAfterMs: 5000 }).error.retryAfterMs, 5000);
  assert.equal(byHttpStatus(502, 'bad gateway').error.retryAfterMs, undefined);
  assert.equal(byHttpStatus(404, 'not found').error.temporary, false);
  assert.equal(byHttpStatus(302, 'moved').error.temporary, true, 'anything unexpected defers');
});

test('Retry-After is read as seconds or as an HTTP date', () => {
  assert.equal(parseRetryAfter('120'), 120_000);
  assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:30 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')), 30_000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter('soon'), undefined);
});

test('recipient-specific ErrorRelatedTo entries name the field and index', () => {
  assert.deepEqual(relatedRecipient('To[3].Email'), { field: 'To', index: 3 });
  assert.deepEqual(relatedRecipient('Bcc[0]'), { field: 'Bcc', index: 0 });
  assert.equal(relatedRecipient('From.Email'), undefined);
  assert.equal(relatedRecipient('HTMLPart'), undefined);
});
