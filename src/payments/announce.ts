import type { OrderState } from './state-machine.js';

/** Chinese names of common currencies, as a voice would say them after the amount. */
const CURRENCY_NAMES: Readonly<Record<string, string>> = {
  CNY: '元',
  HKD: '港元',
  MOP: '澳门元',
  TWD: '新台币',
  USD: '美元',
  EUR: '欧元',
  GBP: '英镑',
  JPY: '日元',
  KRW: '韩元',
  SGD: '新加坡元',
  AUD: '澳元',
  CAD: '加元',
};

const digitsCache = new Map<string, number>();

/** The number of minor-unit digits of an ISO 4217 currency (2 for CNY, 0 for JPY, 3 for KWD). */
export function currencyDigits(currency: string): number {
  let d = digitsCache.get(currency);
  if (d === undefined) {
    try {
      d = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions()
        .maximumFractionDigits as number;
    } catch {
      d = 2;
    }
    digitsCache.set(currency, d);
  }
  return d;
}

/** `4` in CNY -> `4.00`; `1200` in JPY -> `1200`. */
export function formatAmount(amount: number, currency: string): string {
  return amount.toFixed(currencyDigits(currency));
}

/** `4` in CNY -> `4.00 元`; currencies without a Chinese name keep their code (`4.00 CHF`). */
export function sayAmount(amount: number, currency: string): string {
  return `${formatAmount(amount, currency)} ${CURRENCY_NAMES[currency] ?? currency}`;
}

/**
 * The text a merchant's app speaks when an order enters `state`, e.g. `收款 4.00 元` when a payment
 * of 4 CNY succeeded. `amount` is the order's amount (for `refunded`, the refunded amount).
 */
export function announcement(
  state: OrderState,
  amount: number | null,
  currency: string,
  reason?: string | null,
): string {
  const money = amount === null ? '' : ` ${sayAmount(amount, currency)}`;
  switch (state) {
    case 'created':
      return `新订单${money}`;
    case 'paying':
      return `正在支付${money}`;
    case 'succeeded':
      return amount === null ? '收款成功' : `收款${money}`;
    case 'failed':
      return `支付失败${money}`;
    case 'closed':
      return reason === 'timeout' ? `支付超时，订单已关闭${money}` : `订单已关闭${money}`;
    case 'refunded':
      return amount === null ? '退款成功' : `退款${money}`;
  }
}
