import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { announcement, currencyDigits, formatAmount } from '../../src/payments/announce.js';
import {
  canReach,
  decide,
  isTerminal,
  ORDER_STATES,
  type OrderState,
  predecessors,
  RECONCILIATIONS,
  TIMEOUT_STATES,
  TRANSITIONS,
} from '../../src/payments/state-machine.js';

/**
 * The expected outcome of every (current state, event type) pair, written out by hand from the
 * issue's rules rather than computed from the table under test: T transition, S stale, R invalid but
 * retryable (the reported state may still be reached), X invalid for good.
 */
const EXPECTED: Record<'none' | OrderState, Record<OrderState, 'T' | 'S' | 'R' | 'X'>> = {
  none: { created: 'T', paying: 'T', succeeded: 'T', failed: 'T', closed: 'T', refunded: 'R' },
  created: { created: 'S', paying: 'T', succeeded: 'T', failed: 'T', closed: 'T', refunded: 'R' },
  paying: { created: 'S', paying: 'S', succeeded: 'T', failed: 'T', closed: 'T', refunded: 'R' },
  succeeded: { created: 'S', paying: 'S', succeeded: 'S', failed: 'X', closed: 'X', refunded: 'T' },
  failed: { created: 'S', paying: 'S', succeeded: 'X', failed: 'S', closed: 'X', refunded: 'X' },
  closed: { created: 'S', paying: 'S', succeeded: 'X', failed: 'X', closed: 'S', refunded: 'X' },
  refunded: { created: 'S', paying: 'S', succeeded: 'S', failed: 'X', closed: 'X', refunded: 'S' },
};

describe('payments: the order state machine', () => {
  for (const current of ['none', ...ORDER_STATES] as const) {
    for (const type of ORDER_STATES) {
      const want = EXPECTED[current][type];
      it(`${current} + ${type} event -> ${{ T: 'transition', S: 'stale', R: 'invalid (retryable)', X: 'invalid (final)' }[want]}`, () => {
        const d = decide(current === 'none' ? null : current, type);
        switch (want) {
          case 'T':
            assert.deepEqual(d, { kind: 'transition', from: current === 'none' ? null : current, to: type });
            break;
          case 'S':
            assert.deepEqual(d, { kind: 'stale', state: current });
            break;
          case 'R':
          case 'X':
            assert.equal(d.kind, 'invalid');
            if (d.kind !== 'invalid') return;
            assert.equal(d.retryable, want === 'R');
            assert.equal(d.state, current === 'none' ? null : current);
            assert.match(d.reason, new RegExp(type));
            break;
        }
      });
    }
  }

  it('has exactly the transitions of the issue', () => {
    assert.deepEqual(TRANSITIONS, {
      created: ['paying', 'succeeded', 'failed', 'closed'],
      paying: ['succeeded', 'failed', 'closed'],
      succeeded: ['refunded'],
      failed: [],
      closed: [],
      refunded: [],
    });
  });

  it('makes failed, closed and refunded terminal, and only they', () => {
    assert.deepEqual(
      ORDER_STATES.filter((s) => isTerminal(s)),
      ['failed', 'closed', 'refunded'],
    );
  });

  it('times out created and paying orders only', () => {
    assert.deepEqual(TIMEOUT_STATES, ['created', 'paying']);
  });

  it('knows which states come before which', () => {
    assert.equal(canReach('created', 'refunded'), true);
    assert.equal(canReach('paying', 'refunded'), true);
    assert.equal(canReach('failed', 'refunded'), false);
    assert.equal(canReach('refunded', 'created'), false);
    assert.equal(canReach('succeeded', 'succeeded'), false);
    assert.deepEqual(predecessors('refunded'), ['succeeded']);
    assert.deepEqual(predecessors('closed'), ['created', 'paying']);
    assert.deepEqual(predecessors('created'), []);
  });

  it('explains an invalid transition in words the reporter can act on', () => {
    const d = decide('paying', 'refunded');
    assert.equal(d.kind, 'invalid');
    if (d.kind === 'invalid')
      assert.equal(d.reason, 'The order is paying; refunded needs it to be succeeded first.');
    const e = decide('closed', 'succeeded');
    if (e.kind === 'invalid')
      assert.equal(e.reason, 'The order is closed, a final state; it cannot become succeeded.');
    const f = decide('closed', 'succeeded', 'cancelled');
    assert.equal(f.kind, 'invalid');
    if (f.kind === 'invalid') {
      assert.equal(f.reason, 'The order is closed (cancelled), a final state; it cannot become succeeded.');
      assert.equal(f.retryable, false);
    }
  });

  it('reconciles a success that arrives after a timeout close, and nothing else', () => {
    assert.deepEqual(RECONCILIATIONS, { closed: { succeeded: 'timeout' } });
    assert.deepEqual(decide('closed', 'succeeded', 'timeout'), {
      kind: 'transition',
      from: 'closed',
      to: 'succeeded',
      reconciled: true,
    });
    // Only succeeded: a failure or a refund after a timeout close stays invalid; older states are stale.
    assert.equal(decide('closed', 'failed', 'timeout').kind, 'invalid');
    assert.equal(decide('closed', 'refunded', 'timeout').kind, 'invalid');
    assert.deepEqual(decide('closed', 'paying', 'timeout'), { kind: 'stale', state: 'closed' });
    // Once reconciled the order is an ordinary succeeded one.
    assert.deepEqual(decide('succeeded', 'refunded', 'reconciled_after_timeout'), {
      kind: 'transition',
      from: 'succeeded',
      to: 'refunded',
    });
  });
});

describe('payments: spoken announcements', () => {
  it('says the amount received, in yuan with two decimals', () => {
    assert.equal(announcement('succeeded', 4, 'CNY'), '收款 4.00 元');
    assert.equal(announcement('succeeded', 99.9, 'CNY'), '收款 99.90 元');
  });

  it('has a sentence for every state, with and without an amount', () => {
    for (const s of ORDER_STATES) {
      assert.ok(announcement(s, 1, 'CNY').length > 0);
      assert.ok(!announcement(s, null, 'CNY').includes('null'));
    }
    assert.equal(announcement('created', 12.5, 'CNY'), '新订单 12.50 元');
    assert.equal(announcement('paying', 3, 'CNY'), '正在支付 3.00 元');
    assert.equal(announcement('failed', 3, 'CNY'), '支付失败 3.00 元');
    assert.equal(announcement('closed', 3, 'CNY', 'timeout'), '支付超时，订单已关闭 3.00 元');
    assert.equal(announcement('closed', null, 'CNY', 'cancelled'), '订单已关闭');
    assert.equal(announcement('refunded', 1.5, 'CNY'), '退款 1.50 元');
    assert.equal(announcement('succeeded', null, 'CNY'), '收款成功');
  });

  it('uses the minor units and the Chinese name of the currency', () => {
    assert.equal(currencyDigits('JPY'), 0);
    assert.equal(formatAmount(1200, 'JPY'), '1200');
    assert.equal(announcement('succeeded', 1200, 'JPY'), '收款 1200 日元');
    assert.equal(announcement('succeeded', 5, 'USD'), '收款 5.00 美元');
    assert.equal(announcement('succeeded', 5, 'CHF'), '收款 5.00 CHF');
  });
});
