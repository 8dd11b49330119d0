/**
 * microsoft.apps.*.caFile adds to the CAs Node trusts, it does not replace them: behind a TLS-inspecting proxy
 * (whose CA is the caFile) the hosts the proxy lets through untouched still verify against the usual roots.
 * The "system" CA is made trusted in a child process through NODE_EXTRA_CA_CERTS, the machine's trust store
 * is never touched.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { test, type TestContext } from 'node:test';
import { makeSelfSignedCertificate, type TestCertificate } from '../helpers/tls.js';

async function httpsServer(t: TestContext, cert: TestCertificate): Promise<string> {
  const server = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}/v1.0/x`;
}

/** Graph's HTTP client and msal's network client, each given the caFile, GET every URL in a child process. */
const CHILD = `
import { readFileSync } from 'node:fs';
const { nodeHttp } = await import(process.env.GRAPH_HTTP);
const { HttpsNetworkClient } = await import(process.env.MSAL_CLIENT);
const ca = readFileSync(process.env.CA_FILE, 'utf8');
const graph = nodeHttp({ ca });
const msal = new HttpsNetworkClient({ ca });
const answers = {};
for (const [name, url] of Object.entries(JSON.parse(process.env.URLS))) {
  const failed = (e) => e.code ?? e.message;
  answers['graph ' + name] = await graph.send(url, { method: 'GET', headers: {}, timeoutMs: 10000 }).then((a) => a.status, failed);
  answers['msal ' + name] = await msal.sendGetRequestAsync(url).then((a) => a.status, failed);
}
graph.close();
console.log(JSON.stringify(answers));
`;

test('with a caFile (a proxy CA), Graph and msal still trust the system CAs: hosts signed by either verify', async (t) => {
  const system = await makeSelfSignedCertificate('system root');
  const proxy = await makeSelfSignedCertificate('inspecting proxy');
  const urls = { 'behind system CA': await httpsServer(t, system), 'behind proxy CA': await httpsServer(t, proxy) };
  const env = {
    ...process.env,
    NODE_EXTRA_CA_CERTS: system.certPath,
    CA_FILE: proxy.certPath,
    URLS: JSON.stringify(urls),
    GRAPH_HTTP: new URL('../../src/upstreams/graph/http.js', import.meta.url).href,
    MSAL_CLIENT: new URL('../../src/upstreams/oauth/https-client.js', import.meta.url).href,
  };
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', CHILD], { env, timeout: 60_000 }, (err, out, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(out)));
  });
  assert.deepEqual(JSON.parse(stdout), {
    'graph behind system CA': 200,
    'msal behind system CA': 200,
    'graph behind proxy CA': 200,
    'msal behind proxy CA': 200,
  });
});
