/**
 * Helpers the local Stripe server's modules share: the host, Stripe-style ids, amounts in a
 * currency's major unit, a sleep.
 */

/** The server listens on loopback only. */
export const HOST = "127.0.0.1";

const ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** `prefix` followed by `length` random letters and digits, as in Stripe's ids (`cs_test_…`). */
export function randomId(prefix: string, length: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return prefix + Array.from(bytes, (byte) => ALPHANUMERIC[byte % ALPHANUMERIC.length]).join("");
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const finish = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", finish);
      resolve();
    };
    const timer = setTimeout(finish, ms);
    signal.addEventListener("abort", finish, { once: true });
  });
}

// Stripe's zero-decimal currencies: amounts are in the major unit (docs.stripe.com/currencies).
const ZERO_DECIMAL = new Set(
  "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split(" "),
);

/** An amount in minor units as its major unit, without a symbol: 5000 usd → "50.00". */
export function majorUnits(amount: number, currency: string): string {
  return ZERO_DECIMAL.has(currency) ? String(amount) : (amount / 100).toFixed(2);
}

/** An amount in minor units with its currency, as Stripe's messages show it: "$50.00". */
export function formatMoney(amount: number, currency: string): string {
  const digits = ZERO_DECIMAL.has(currency) ? 0 : 2;
  try {
    return new Intl.NumberFormat("en-US", {
      style: "currency",
      currency: currency.toUpperCase(),
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    }).format(amount / 10 ** digits);
  } catch {
    return `${majorUnits(amount, currency)} ${currency.toUpperCase()}`;
  }
}
