/**
 * The offline fallback (OFFLINE_WEBHOOK_URL): every offline user of a notification is forwarded on its
 * own, so one forward the webhook engine cannot store does not cost the others theirs, and each outcome
 * is counted. Fakes for presence and the webhook engine.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Presence } from '../../src/bus/types.js';
import { HeraldError } from '../../src/errors.js';
import { offlineForwarder } from '../../src/router/offline.js';
import type { Notification } from '../../src/router/types.js';
import { until } from '../helpers.js';

const note = (users: string[]): Notification => ({
  v: 1,
  id: 'n1',
  appId: 'app',
  ts: 1,
  data: '{"x":1}',
  users,
});

function presence(online: string[] | Error): Presence {
  return {
    online: async () => {
      if (online instanceof Error) throw online;
      return new Set(online);
    },
  } as unknown as Presence;
}

describe('offline fallback', () => {
  it('forwards the other offline users when one forward fails, and counts each outcome', async () => {
    const stored: string[] = [];
    const results: [string, number][] = [];
    const forward = offlineForwarder({
      url: 'https://push.example/hook',
      presence: presence(['on']),
      sink: {
        enqueue: async (input) => {
          const user = (input.payload as { userId: string }).userId;
          if (user === 'bad') throw new HeraldError('store_unavailable');
          stored.push(user);
          return { id: `w-${user}`, duplicate: false };
        },
      },
      logger: pino({ level: 'silent' }),
      onResult: (result, users) => results.push([result, users]),
    });
    forward(note(['a', 'bad', 'on', 'b']));
    await until(() => results.length === 2, 2000, 'both outcomes counted');
    assert.deepEqual(stored, ['a', 'b'], 'the users after the failed one are forwarded too');
    assert.deepEqual(results, [
      ['forwarded', 2],
      ['failed', 1],
    ]);
  });

  it('counts every user as unknown when presence cannot be read', async () => {
    const results: [string, number][] = [];
    let enqueued = 0;
    const forward = offlineForwarder({
      url: 'https://push.example/hook',
      presence: presence(new Error('redis away')),
      sink: {
        enqueue: async () => {
          enqueued++;
          return { id: 'w', duplicate: false };
        },
      },
      logger: pino({ level: 'silent' }),
      onResult: (result, users) => results.push([result, users]),
    });
    forward(note(['a', 'b', 'c']));
    await until(() => results.length === 1, 2000, 'counted');
    assert.deepEqual(results, [['unknown', 3]]);
    assert.equal(enqueued, 0);
  });
});
