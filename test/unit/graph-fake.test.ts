/**
 * The Graph fake refuses what Graph documents as refused, so tests passing against it mean something.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { startGraphFake, type GraphFake } from '../fakes/graph.js';

const AUTH = { authorization: 'Bearer t' };

async function fake(t: TestContext): Promise<GraphFake> {
  const f = await startGraphFake({ tokens: ['t'] });
  t.after(() => f.close());
  return f;
}

async function call(url: string, init: RequestInit): Promise<{ status: number; json: { error?: { code: string; message: string } } & Record<string, unknown>; headers: Headers }> {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : {}, headers: res.headers };
}

test('a request body over 4,000,000 bytes is refused with 413 and counted', async (t) => {
  const f = await fake(t);
  const body = 'A'.repeat(4_000_004);
  const r = await call(`${f.baseUrl}/users/a@b.test/sendMail`, { method: 'POST', headers: { ...AUTH, 'content-type': 'text/plain' }, body });
  assert.equal(r.status, 413);
  assert.equal(r.json.error!.message, 'The maximum request length supported is 4MB.');
  assert.equal(f.oversizedRequests, 1);
  assert.equal(f.deliveries.length, 0);
});

test('no token, a wrong token, bad base64 MIME: 401, 401, 400 as documented', async (t) => {
  const f = await fake(t);
  const url = `${f.baseUrl}/users/a@b.test/sendMail`;
  assert.equal((await call(url, { method: 'POST', body: 'x' })).json.error!.code, 'InvalidAuthenticationToken');
  assert.equal((await call(url, { method: 'POST', headers: { authorization: 'Bearer nope' }, body: 'x' })).status, 401);
  const bad = await call(url, { method: 'POST', headers: { ...AUTH, 'content-type': 'text/plain' }, body: 'not base64!' });
  assert.deepEqual([bad.status, bad.json.error!.code, bad.json.error!.message], [400, 'ErrorMimeContentInvalidBase64String', 'Invalid base64 string for MIME content.']);
});

test('upload sessions: at least 2 MiB, ranges in order and exact, no Authorization header, 201 with Location at the end', async (t) => {
  const f = await fake(t);
  const user = `${f.baseUrl}/users/a@b.test`;
  const draft = await call(`${user}/messages`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ subject: 's', toRecipients: [{ emailAddress: { address: 'x@y.test' } }] }) });
  assert.equal(draft.status, 201);
  const session = (size: number) =>
    call(`${user}/messages/${String(draft.json.id)}/attachments/createUploadSession`, {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: JSON.stringify({ AttachmentItem: { attachmentType: 'file', name: 'f.bin', size } }),
    });
  const small = await session(2 * 1024 * 1024 - 1);
  assert.equal(small.json.error!.code, 'ErrorAttachmentSizeShouldNotBeLessThanMinimumSize');
  const size = 3 * 1024 * 1024 + 10;
  const s = await session(size);
  assert.equal(s.status, 201);
  assert.deepEqual(s.json.nextExpectedRanges, ['0-']);
  const uploadUrl = String(s.json.uploadUrl);
  const put = (range: string, length: number, headers: Record<string, string> = {}) =>
    call(uploadUrl, { method: 'PUT', headers: { 'content-type': 'application/octet-stream', 'content-range': range, ...headers }, body: Buffer.alloc(length, 7) });

  assert.equal((await put(`bytes 0-99/${size}`, 100, AUTH)).status, 400, 'Authorization is refused on the upload URL');
  assert.equal((await put(`bytes 100-199/${size}`, 100)).status, 416, 'must start at the next expected byte');
  assert.equal((await put(`bytes 0-99/${size}`, 50)).status, 416, 'the length must match the range');
  assert.equal((await put(`bytes 0-99/${size + 1}`, 100)).status, 416, 'the total must match the session');
  const first = await put(`bytes 0-1999999/${size}`, 2_000_000);
  assert.deepEqual([first.status, first.json.nextExpectedRanges], [200, ['2000000']]);
  const last = await put(`bytes 2000000-${size - 1}/${size}`, size - 2_000_000);
  assert.equal(last.status, 201);
  assert.match(String(last.headers.get('location')), /\/Attachments\('/);
  assert.equal(f.drafts.get(String(draft.json.id))!.attachments[0]!.content.length, size);
});

test('throttling on command: 429 with Retry-After for the next request only; ErrorSendAsDenied until allowed', async (t) => {
  const f = await fake(t);
  const url = `${f.baseUrl}/users/a@b.test/sendMail`;
  const mime = Buffer.from('To: x@y.test\r\nSubject: s\r\n\r\nhi\r\n').toString('base64');
  const post = () => call(url, { method: 'POST', headers: { ...AUTH, 'content-type': 'text/plain' }, body: mime });
  f.throttle('A@B.test', { retryAfterSeconds: 7 });
  const throttled = await post();
  assert.deepEqual([throttled.status, throttled.headers.get('retry-after')], [429, '7']);
  assert.equal((await post()).status, 202);
  f.denySendAs('a@b.test');
  const denied = await post();
  assert.deepEqual([denied.status, denied.json.error!.code], [403, 'ErrorSendAsDenied']);
  f.denySendAs('a@b.test', false);
  assert.equal((await post()).status, 202);
  assert.deepEqual(f.deliveries.map((d) => d.recipients), [['x@y.test'], ['x@y.test']]);
});
