import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { call, closeAll, connect, fence, post, startTestHerald, type TestHerald, until } from '../helpers.js';

const APP = 'ops-app';

/** The value of one sample of the Prometheus text, or undefined when absent. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const escaped = `${name}${labels}`.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const m = new RegExp(`^${escaped} ([0-9.eE+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

describe('HTTP: operations endpoints', () => {
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald();
  });
  after(async () => {
    await herald.cleanup();
  });

  const metrics = async () => {
    const res = await fetch(`${herald.url()}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    return res.text();
  };

  it('GET /healthz: 200 ok', async () => {
    const res = await fetch(`${herald.url()}/healthz`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { status: string; uptimeSeconds: number };
    assert.equal(body.status, 'ok');
    assert.equal(typeof body.uptimeSeconds, 'number');
  });

  it('GET /readyz: 200 ready with the store check', async () => {
    const res = await fetch(`${herald.url()}/readyz`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { status: string; checks: Record<string, { ok: boolean }> };
    assert.equal(body.status, 'ready');
    assert.equal(body.checks.store?.ok, true);
    for (const [name, c] of Object.entries(body.checks)) assert.equal(c.ok, true, name);
  });

  it('GET /metrics: herald_connections per app follows connects and disconnects', async () => {
    const a = await connect(herald, APP, { clientId: 'm1' });
    const b = await connect(herald, APP, { clientId: 'm1', deviceId: 'second' });
    const c = await connect(herald, 'ops-other', { clientId: 'm2' });
    let text = await metrics();
    assert.match(text, /^# TYPE herald_connections gauge$/m);
    assert.equal(sample(text, 'herald_connections', `{app="${APP}"}`), 2);
    assert.equal(sample(text, 'herald_connections', '{app="ops-other"}'), 1);
    await call(a, 'subscribe', ['s1', 's2']);
    await call(b, 'subscribe', 's1');
    text = await metrics();
    assert.equal(sample(text, 'herald_subscriptions', `{app="${APP}"}`), 3);
    b.close();
    c.close();
    await until(() => herald.router.connectionCount() === 1, 3000, 'disconnects');
    text = await metrics();
    assert.equal(sample(text, 'herald_connections', `{app="${APP}"}`), 1);
    assert.equal(sample(text, 'herald_connections', '{app="ops-other"}') ?? 0, 0);
    assert.equal(sample(text, 'herald_subscriptions', `{app="${APP}"}`), 2);
    a.close();
  });

  it('GET /metrics: the embedded store reports its turns (wait, and hold by statement)', async () => {
    const text = await metrics();
    // The start-up's and readiness checks' statements at least.
    assert.ok((sample(text, 'herald_embedded_store_wait_seconds_count') ?? 0) > 0);
    assert.match(text, /^herald_embedded_store_hold_seconds_count\{op="[a-z_ ]+"\} [1-9]/m);
    // The checkpointer's figures (test/unit/checkpoints.test.ts checks what they count).
    assert.match(text, /^herald_embedded_store_checkpoints_total\{result="done"\} \d+$/m);
    assert.match(text, /^herald_embedded_store_wal_bytes \d+$/m);
  });

  it('GET /metrics: published notifications and deliveries count exactly', async () => {
    const app = 'ops-deliveries';
    const s = await Promise.all([1, 2, 3].map((i) => connect(herald, app, { clientId: `d${i}` })));
    await Promise.all(s.map((x) => call(x, 'subscribe', 'news')));
    await fence(herald, app, ...s); // 1 published, 3 deliveries
    const before = await metrics();
    const d0 = sample(before, 'herald_deliveries_total', `{app="${app}"}`) ?? 0;
    const p0 = sample(before, 'herald_notifications_published_total', `{app="${app}"}`) ?? 0;
    assert.equal(d0, 3);
    assert.equal(p0, 1);
    await post(herald, '/notify', { appId: app, eventTopics: ['news'], data: 1 }); // 3
    await post(herald, '/notify', { appId: app, users: ['d1', 'd2'], eventTopics: ['news'], data: 2 }); // 3, not 5
    await post(herald, '/notify', { appId: app, users: ['nobody'], data: 3 }); // 0
    await post(herald, '/notify', { appId: app, data: 4 }); // rejected: not published
    const text = await metrics();
    assert.equal(sample(text, 'herald_deliveries_total', `{app="${app}"}`), d0 + 6);
    assert.equal(sample(text, 'herald_notifications_published_total', `{app="${app}"}`), p0 + 3);
    assert.match(text, /^herald_notify_to_emit_seconds_count \d+$/m);
    assert.ok((sample(text, 'herald_notify_to_emit_seconds_count') ?? 0) >= 4);
    assert.match(text, /^herald_event_loop_delay_p99_seconds [0-9.eE+-]+$/m);
    assert.match(text, /^process_cpu_user_seconds_total /m);
    assert.ok((sample(text, 'herald_http_errors_total', '{code="no_target"}') ?? 0) >= 1);
    closeAll(...s);
  });

  it('GET /openapi.json: an OpenAPI 3 document describing /notify and /notify/batch', async () => {
    const res = await fetch(`${herald.url()}/openapi.json`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as {
      openapi: string;
      info: { title: string; version: string };
      paths: Record<
        string,
        Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>
      >;
    };
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    assert.equal(typeof doc.info.title, 'string');
    assert.equal(typeof doc.info.version, 'string');
    const notify = doc.paths['/notify']?.post;
    assert.ok(notify, 'POST /notify is documented');
    const schema = JSON.stringify(notify.requestBody?.content);
    for (const field of ['appId', 'users', 'devices', 'eventTopics', 'broadcast', 'data']) {
      assert.ok(schema.includes(`"${field}"`), `${field} in the /notify body schema`);
    }
    assert.ok(doc.paths['/notify/batch']?.post, 'POST /notify/batch is documented');
    assert.ok(doc.paths['/healthz']?.get);
    assert.ok(doc.paths['/readyz']?.get);
    const responses = (notify as unknown as { responses: Record<string, unknown> }).responses;
    for (const code of ['202', '400', '401', '403', '404', '413'])
      assert.ok(responses[code], `response ${code}`);
  });

  it('unknown routes answer 404 not_found in the error format', async () => {
    const res = await fetch(`${herald.url()}/nope?x=1`);
    assert.equal(res.status, 404);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'not_found');
    assert.match(body.error.message, /\/nope/);
  });
});

describe('HTTP: GET /metrics behind METRICS_TOKEN', () => {
  const TOKEN = 'metrics-token-0123456789';
  let herald: TestHerald;
  before(async () => {
    herald = await startTestHerald({}, { METRICS_TOKEN: TOKEN });
  });
  after(async () => {
    await herald.cleanup();
  });

  const scrape = (authorization?: string) =>
    fetch(`${herald.url()}/metrics`, authorization === undefined ? {} : { headers: { authorization } });

  it('without the token, with another one or another scheme: 401 unauthorized in the error format', async () => {
    for (const authorization of [
      undefined,
      'Bearer wrong-token',
      `Bearer ${TOKEN}x`,
      `Bearer ${TOKEN.slice(0, -1)}`,
      `Basic ${Buffer.from(`user:${TOKEN}`).toString('base64')}`,
      TOKEN,
      'Bearer',
    ]) {
      const res = await scrape(authorization);
      assert.equal(res.status, 401, String(authorization));
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      assert.equal(res.headers.get('www-authenticate'), 'Bearer realm="metrics"');
      const body = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'unauthorized');
      assert.match(body.error.message, /METRICS_TOKEN/);
      assert.ok(!body.error.message.includes(TOKEN), 'the token is not echoed');
    }
  });

  it('with Authorization: Bearer <METRICS_TOKEN> (any case of the scheme): the Prometheus text', async () => {
    for (const authorization of [`Bearer ${TOKEN}`, `bearer ${TOKEN}`, `Bearer  ${TOKEN} `]) {
      const res = await scrape(authorization);
      assert.equal(res.status, 200, authorization);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
      assert.match(await res.text(), /^# TYPE herald_connections gauge$/m);
    }
    // The refused scrapes are counted like other errors.
    const text = await (await scrape(`Bearer ${TOKEN}`)).text();
    assert.ok((sample(text, 'herald_http_errors_total', '{code="unauthorized"}') ?? 0) >= 1);
  });

  it('probes and the OpenAPI document stay open', async () => {
    for (const path of ['/healthz', '/readyz', '/openapi.json']) {
      const res = await fetch(`${herald.url()}${path}`);
      assert.equal(res.status, 200, path);
    }
    const doc = (await (await fetch(`${herald.url()}/openapi.json`)).json()) as {
      paths: Record<string, { get?: { responses?: Record<string, unknown> } }>;
    };
    assert.ok(doc.paths['/metrics']?.get?.responses?.['401'], 'the 401 of /metrics is documented');
  });
});

describe('HTTP: GET /metrics without METRICS_TOKEN', () => {
  it('is open, whatever Authorization says', async () => {
    const herald = await startTestHerald();
    try {
      for (const headers of [{}, { authorization: 'Bearer anything' }] as Record<string, string>[]) {
        const res = await fetch(`${herald.url()}/metrics`, { headers });
        assert.equal(res.status, 200);
        await res.text();
      }
    } finally {
      await herald.cleanup();
    }
  });
});
