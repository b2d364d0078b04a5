import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Agent } from 'undici';
import { type Alert, TelegramSink, telegramRetryAfterMs } from '../../src/webhooks/alerts.js';
import { Merchant } from './helpers.js';

const alert = (n: number, level: Alert['level'] = 'normal'): Alert => ({
  type: 'slow_merchant',
  level,
  at: new Date(),
  data: { n },
  text: `alert number ${n}`,
});

/** A fake Bot API: answers each sendMessage with the next of `answers` (the last one repeats). */
async function fakeTelegram(answers: { status: number; body: unknown }[]) {
  return Merchant.start((_req, res, n) => {
    const a = answers[Math.min(n, answers.length) - 1] as { status: number; body: unknown };
    res.writeHead(a.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(a.body));
  });
}

const texts = (m: Merchant) => m.received.map((r) => (JSON.parse(r.body) as { text: string }).text);

describe('Telegram sink rate limits', () => {
  const agent = new Agent();
  const servers: Merchant[] = [];
  after(async () => {
    for (const s of servers) await s.close();
    await agent.close();
  });

  it('reads retry_after from the Bot API answer or the header', () => {
    assert.equal(
      telegramRetryAfterMs('{"ok":false,"error_code":429,"parameters":{"retry_after":3}}', undefined),
      3000,
    );
    assert.equal(telegramRetryAfterMs('not json', '7'), 7000);
    assert.equal(telegramRetryAfterMs('{}', undefined), null);
  });

  it('sends at most one message per interval to a chat and joins the alerts that wait', async () => {
    const ok = { status: 200, body: { ok: true, result: { message_id: 1 } } };
    const server = await fakeTelegram([ok]);
    servers.push(server);
    const sink = new TelegramSink(agent, server.url(''), '1:t', ['-1001'], 60_000);
    await sink.send(alert(1));
    // The next message may only go a minute later: these wait together, nothing is sent meanwhile.
    const waiting = [2, 3, 4].map((n) => sink.send(alert(n, n === 3 ? 'critical' : 'normal')));
    assert.equal(sink.queued, 3);
    assert.equal(server.received.length, 1);
    sink.close();
    const results = await Promise.allSettled(waiting);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.match(String((r as PromiseRejectedResult).reason), /shutting down/);
    }
    assert.deepEqual(texts(server), ['alert number 1']);
  });

  it('waits out a 429 retry_after, then sends everything that waited as one message', async () => {
    const server = await fakeTelegram([
      {
        status: 429,
        body: {
          ok: false,
          error_code: 429,
          description: 'Too Many Requests',
          parameters: { retry_after: 1 },
        },
      },
      { status: 200, body: { ok: true, result: { message_id: 2 } } },
    ]);
    servers.push(server);
    const sink = new TelegramSink(agent, server.url(''), '1:t', ['-1001'], 10);
    const all = [1, 2, 3, 4, 5].map((n) => sink.send(alert(n, n === 4 ? 'critical' : 'normal')));
    await Promise.all(all);
    const t = texts(server);
    assert.equal(t.length, 2, 'one refused message, then one message with every alert');
    assert.equal(t[0], 'alert number 1');
    for (const n of [1, 2, 3, 4, 5]) assert.ok(t[1]?.includes(`alert number ${n}`));
    const second = JSON.parse(server.received[1]?.body ?? '{}') as { disable_notification: boolean };
    assert.equal(second.disable_notification, false, 'a joined message with a critical alert rings');
  });

  it('a message Telegram refuses for good fails its alerts (logged by the Alerter), never silently', async () => {
    const server = await fakeTelegram([
      { status: 400, body: { ok: false, description: 'Bad Request: chat not found' } },
    ]);
    servers.push(server);
    const sink = new TelegramSink(agent, server.url(''), '1:t', ['-1001', '-1002'], 10);
    await assert.rejects(sink.send(alert(1)), /chat -1001: HTTP 400.*chat not found.*chat -1002: HTTP 400/);
    assert.equal(server.received.length, 2);
  });
});
