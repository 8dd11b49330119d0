/**
 * Message tags reach the metrics only through the allow-list: an allowed value is its own label, anything
 * else is "other", no header is "none", so a device writing free text into X-Tag cannot grow the label set.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import nodemailer from 'nodemailer';
import { httpGet, parseMetrics, series } from '../helpers/admin.js';
import { startInProcess, tempDir, testConfig } from '../helpers/daemon.js';

test('accepted messages are counted per allow-listed tag, with "other" and "none" for the rest', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const relay = await startInProcess(await testConfig({ dir: dir.path, extra: { tags: { header: 'X-Tag', allowed: ['invoice', 'scan'] } } }));
  t.after(() => relay.stop());
  const client = nodemailer.createTransport({ host: '127.0.0.1', port: relay.port('relay'), secure: false, ignoreTLS: true });
  t.after(() => client.close());
  const envelope = { from: 'erp@example.com', to: ['office@example.com'] };
  for (const tag of ['Invoice', 'invoice', 'customer 4711 reminder', undefined]) {
    const header = tag === undefined ? '' : `X-Tag: ${tag}\r\n`;
    await client.sendMail({ envelope, raw: `${header}Subject: tagged\r\n\r\nbody\r\n` });
  }
  const metrics = parseMetrics((await httpGet(relay.daemon.admin!.port, '/metrics')).body);
  const count = (tag: string) => metrics.get(series('smarthost_messages_received_by_tag_total', { listener: 'relay', tag }));
  assert.equal(count('invoice'), 2, 'the allowed value, compared case-insensitively');
  assert.equal(count('scan'), 0, 'allowed values start at zero');
  assert.equal(count('other'), 1, 'free text becomes "other"');
  assert.equal(count('none'), 1, 'no header is "none"');
  const labels = [...metrics.keys()].filter((k) => k.startsWith('smarthost_messages_received_by_tag_total{'));
  assert.ok(labels.every((k) => /tag="(invoice|scan|other|none)"/.test(k)), `unexpected labels: ${labels.join(' ')}`);
});
