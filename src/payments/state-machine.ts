/**
 * The order state machine of payment tracking: the one transition table, and pure functions that
 * decide what an event does to an order. Nothing else in Herald encodes which state may follow which;
 * the README section "Payment tracking" documents this table.
 */

/** Every state an order can be in. */
export const ORDER_STATES = ['created', 'paying', 'succeeded', 'failed', 'closed', 'refunded'] as const;
export type OrderState = (typeof ORDER_STATES)[number];

/** An event's `type` names the state it reports, so event types and states are the same set. */
export type EventType = OrderState;

/**
 * THE transition table: for each state, the states an order may move to next. A state with no
 * successor is terminal. An order that does not exist yet behaves as if it were `created`: its first
 * event may be `created` or any successor of `created` (the order is then created implicitly, so an
 * outcome that arrives before the machine's `created` is not lost).
 */
export const TRANSITIONS: Readonly<Record<OrderState, readonly OrderState[]>> = {
  created: ['paying', 'succeeded', 'failed', 'closed'],
  paying: ['succeeded', 'failed', 'closed'],
  succeeded: ['refunded'],
  failed: [],
  closed: [],
  refunded: [],
};

/**
 * Reconciliations: the few moves out of a final state the table above does not allow, each only when
 * the order reached that state for the given reason. A `succeeded` reported after the order was closed
 * by PAYMENT_TIMEOUT means the money was taken after all (the payment back-end answered late): the
 * order moves `closed -> succeeded`, recorded as a reconciliation, and app and merchant are told.
 * An order closed for any other reason (cancelled by the merchant) stays closed: that success is an
 * invalid transition for an operator to refund by hand.
 */
export const RECONCILIATIONS: Readonly<Partial<Record<OrderState, Partial<Record<OrderState, string>>>>> = {
  closed: { succeeded: 'timeout' },
};

/** The reason a reconciliation transition records (and notifies). */
export const RECONCILED_REASON = 'reconciled_after_timeout';

/** States the timeout sweep closes: the non-terminal states that may move to `closed`. */
export const TIMEOUT_STATES: readonly OrderState[] = ORDER_STATES.filter((s) =>
  TRANSITIONS[s].includes('closed'),
);

/** States in which an order is finished as far as payment goes (used for the success rate). */
export const FINAL_STATES: readonly OrderState[] = ['succeeded', 'failed', 'closed', 'refunded'];

export function isOrderState(value: unknown): value is OrderState {
  return typeof value === 'string' && (ORDER_STATES as readonly string[]).includes(value);
}

export function isTerminal(state: OrderState): boolean {
  return TRANSITIONS[state].length === 0;
}

/** `REACHABLE[a]` holds every state reachable from `a` through one or more transitions. */
const REACHABLE: Readonly<Record<OrderState, ReadonlySet<OrderState>>> = (() => {
  const out = {} as Record<OrderState, Set<OrderState>>;
  for (const start of ORDER_STATES) {
    const seen = new Set<OrderState>();
    const todo: OrderState[] = [...TRANSITIONS[start]];
    while (todo.length > 0) {
      const s = todo.pop() as OrderState;
      if (seen.has(s)) continue;
      seen.add(s);
      todo.push(...TRANSITIONS[s]);
    }
    out[start] = seen;
  }
  return out;
})();

/** Whether `later` can follow `earlier` through one or more transitions. */
export function canReach(earlier: OrderState, later: OrderState): boolean {
  return REACHABLE[earlier].has(later);
}

/** What an event does to an order. */
export type Decision =
  /** The order moves from `from` (`null`: it did not exist) to `to`. */
  | { kind: 'transition'; from: OrderState | null; to: OrderState; reconciled?: true }
  /** The order is already in, or past, the reported state: the event is recorded and has no effect. */
  | { kind: 'stale'; state: OrderState }
  /**
   * The reported state cannot follow the current one. `retryable`: it may become valid later (an
   * earlier event has not arrived yet, e.g. `refunded` while `paying`); otherwise it never will
   * (e.g. `succeeded` after `closed`).
   */
  | { kind: 'invalid'; state: OrderState | null; retryable: boolean; reason: string };

/**
 * Decides what an event of type `type` does to an order in state `current` (`null` when the order
 * does not exist yet). Pure: the caller applies the decision.
 *
 * - `type` is a successor of `current` in the table: a transition; also a reconciliation
 *   (RECONCILIATIONS) when the order reached `current` for the reason it names (`currentReason`).
 * - `type` is `current`, or a state `current` has passed (a `paying` after `succeeded`): stale.
 * - otherwise: invalid, retryable when `type` can still be reached from `current`.
 */
export function decide(
  current: OrderState | null,
  type: EventType,
  currentReason: string | null = null,
): Decision {
  if (current === null) {
    if (type === 'created' || TRANSITIONS.created.includes(type)) {
      return { kind: 'transition', from: null, to: type };
    }
    return {
      kind: 'invalid',
      state: null,
      retryable: true,
      reason: `The order does not exist yet; a ${type} event needs it to be ${predecessors(type).join(' or ')} first.`,
    };
  }
  if (TRANSITIONS[current].includes(type)) return { kind: 'transition', from: current, to: type };
  const onlyAfter = RECONCILIATIONS[current]?.[type];
  if (onlyAfter !== undefined && currentReason === onlyAfter) {
    return { kind: 'transition', from: current, to: type, reconciled: true };
  }
  if (type === current || canReach(type, current)) return { kind: 'stale', state: current };
  if (canReach(current, type)) {
    return {
      kind: 'invalid',
      state: current,
      retryable: true,
      reason: `The order is ${current}; ${type} needs it to be ${predecessors(type).join(' or ')} first.`,
    };
  }
  return {
    kind: 'invalid',
    state: current,
    retryable: false,
    reason: isTerminal(current)
      ? `The order is ${current}${currentReason ? ` (${currentReason})` : ''}, a final state; it cannot become ${type}.`
      : `The order is ${current}; it can never become ${type} from there.`,
  };
}

/** The states from which `state` can be entered directly. */
export function predecessors(state: OrderState): OrderState[] {
  return ORDER_STATES.filter((s) => TRANSITIONS[s].includes(state));
}
