import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SmtpError } from '../../src/smtp-error.js';
import { classifyGraphAnswer, classifyGraphError, GraphHttpError, parseRetryAfter } from '../../src/upstreams/graph/errors.js';
import { base64Length, MAX_MIME_MESSAGE, transportFor, UPLOAD_CHUNK, MAX_REQUEST_BODY, GRAPH_REQUEST_LIMIT } from '../../src/upstreams/graph/limits.js';

const SEND_AS_TEXT = 'The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message.';

test('the error table: each Graph answer becomes the documented action', () => {
  const rows: [GraphHttpError, string, boolean, number | undefined][] = [
    // [answer, expected "code enhanced", temporary, retryAfterMs]
    [new GraphHttpError(429, 'ApplicationThrottled', 'Application is over its MailboxConcurrency limit.', 12_000), '451 4.4.5', true, 12_000],
    [new GraphHttpError(503, 'ServiceUnavailable', 'Service unavailable.', 30_000), '451 4.3.2', true, 30_000],
    [new GraphHttpError(503, 'ServiceUnavailable', 'no Retry-After'), '451 4.3.2', true, undefined],
    [new GraphHttpError(500, 'InternalServerError', 'boom'), '451 4.3.0', true, undefined],
    [new GraphHttpError(504, 'GatewayTimeout', 'slow', 5000), '451 4.3.0', true, 5000],
    [new GraphHttpError(401, 'InvalidAuthenticationToken', 'Lifetime validation failed, the token is expired.'), '451 4.7.0', true, undefined],
    [new GraphHttpError(403, 'ErrorSendAsDenied', SEND_AS_TEXT), '550 5.7.60', false, undefined],
    [new GraphHttpError(403, 'ErrorAccessDenied', 'Access is denied. Check credentials and try again.'), '451 4.7.0', true, undefined],
    [new GraphHttpError(404, 'ErrorInvalidUser', "The requested user 'x@y' is invalid."), '550 5.1.8', false, undefined],
    [new GraphHttpError(404, 'ErrorItemNotFound', 'The specified object was not found in the store.'), '451 4.3.0', true, undefined],
    [new GraphHttpError(400, 'ErrorInvalidRecipients', 'At least one recipient is not valid.'), '550 5.1.3', false, undefined],
    [new GraphHttpError(400, 'ErrorMimeContentInvalidBase64String', 'Invalid base64 string for MIME content.'), '554 5.6.0', false, undefined],
    [new GraphHttpError(413, 'RequestEntityTooLarge', 'The maximum request length supported is 4MB.'), '552 5.3.4', false, undefined],
    [new GraphHttpError(409, 'Conflict', 'whatever'), '550 5.0.0', false, undefined],
    // A 4xx that is not 429 never carries a Retry-After into the queue.
    [new GraphHttpError(400, 'BadRequest', 'x', 9000), '554 5.6.0', false, undefined],
  ];
  for (const [answer, reply, temporary, retryAfterMs] of rows) {
    const e = classifyGraphAnswer(answer);
    assert.equal(`${e.code} ${e.enhanced}`, reply, `${answer.status} ${answer.code}`);
    assert.equal(e.temporary, temporary, `${answer.status} ${answer.code} temporary`);
    assert.equal(e.retryAfterMs, retryAfterMs, `${answer.status} ${answer.code} retryAfterMs`);
    assert.ok(e.message.includes(`Graph ${answer.status} ${answer.code}: ${answer.graphMessage}`), `Graph's own text in ${e.message}`);
  }
});

test('ErrorSendAsDenied bounces with Graph\'s text and the fix naming Send As', () => {
  const e = classifyGraphAnswer(new GraphHttpError(403, 'ErrorSendAsDenied', SEND_AS_TEXT, undefined, 'req-123'));
  assert.match(e.reply, /^550 5\.7\.60 Graph 403 ErrorSendAsDenied: The user account which was used to submit this request does not have the right/);
  assert.match(e.message, /Send As/);
  assert.match(e.message, /request-id req-123/);
});

test('network failures and timeouts are temporary; our own SmtpErrors (a token failure) pass through', () => {
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' });
  assert.match(classifyGraphError(refused).reply, /^451 4\.4\.1 cannot reach Graph: ECONNREFUSED/);
  const timeout = Object.assign(new Error('no complete answer within 100 ms'), { name: 'TimeoutError' });
  assert.match(classifyGraphError(timeout).reply, /^451 4\.4\.2 /);
  const token = new SmtpError(451, '4.7.0', 'cannot get an access token');
  assert.equal(classifyGraphError(token), token);
  assert.ok(classifyGraphError(new Error('anything else')).temporary, 'unknown failures defer');
});

test('Retry-After: seconds or an HTTP date; nonsense is ignored', () => {
  assert.equal(parseRetryAfter('120'), 120_000);
  assert.equal(parseRetryAfter('0'), 0);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30_000);
  assert.equal(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now), 0, 'a date in the past means now');
  assert.equal(parseRetryAfter('soon'), undefined);
  assert.equal(parseRetryAfter(undefined), undefined);
});

test('size decision: MIME while the base64 stays under 4,000,000 bytes, a draft beyond', () => {
  assert.equal(MAX_MIME_MESSAGE, 3_000_000);
  assert.equal(base64Length(MAX_MIME_MESSAGE), MAX_REQUEST_BODY);
  assert.equal(transportFor(0), 'mime');
  assert.equal(transportFor(MAX_MIME_MESSAGE), 'mime');
  assert.equal(transportFor(MAX_MIME_MESSAGE + 1), 'draft');
  assert.equal(transportFor(30 * 1024 * 1024), 'draft');
  assert.ok(MAX_REQUEST_BODY < GRAPH_REQUEST_LIMIT, 'under 4 MB in both readings');
  assert.ok(UPLOAD_CHUNK < 4_000_000 && UPLOAD_CHUNK % (320 * 1024) === 0);
});
