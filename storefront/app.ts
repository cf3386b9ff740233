/// <reference lib="dom" />
/**
 * The local demo storefront: lists the event's tiers, takes a guest's email and quantities, and on
 * "Pay" starts a Stripe Checkout through guest-checkout (storefront/checkout.ts), then redirects
 * to the session's page. Back from Checkout (`?session_id=`), it shows the order's status and
 * what has been refunded (storefront/order-view.ts).
 *
 * Bundled with supabase-js by scripts/storefront-server.ts (`deno bundle`); served at
 * http://127.0.0.1:3000 by `npm start`. The event and order reads go through the local server's
 * dev endpoints (/api/...), standing in for the PostgREST reads a hosted storefront would make.
 */
import { createClient } from "@supabase/supabase-js";
import { type GuestCheckoutRequest, newIdempotencyKey, startGuestCheckout } from "./checkout.ts";
import { describeOrder, money, type OrderInfo } from "./order-view.ts";

interface StorefrontConfig {
  supabaseUrl: string;
  /** The project's publishable key (sb_publishable_…): supabase-js sends it in apikey. */
  publishableKey: string;
  eventId: string;
}

interface Tier {
  id: string;
  name: string;
  unitAmount: number;
  maxPerOrder: number;
  seatsLeft: number | null;
}

interface EventInfo {
  id: string;
  title: string;
  currency: string;
  startsAt: string | null;
  tiers: Tier[];
}

/** The attempt in progress: its key, kept for every retry of the same cart (also after Back). */
interface Attempt {
  key: string;
  fingerprint: string;
  request: GuestCheckoutRequest;
}

const ATTEMPT_STORAGE = "storefront.checkout-attempt";

const $ = <T extends HTMLElement>(selector: string): T => {
  const element = document.querySelector<T>(selector);
  if (!element) throw new Error(`Missing element ${selector}`);
  return element;
};

async function getJson<T>(path: string): Promise<T> {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return await response.json() as T;
}

function loadAttempt(): Attempt | null {
  try {
    return JSON.parse(sessionStorage.getItem(ATTEMPT_STORAGE) ?? "null") as Attempt | null;
  } catch {
    return null;
  }
}

function saveAttempt(attempt: Attempt | null): void {
  if (attempt) sessionStorage.setItem(ATTEMPT_STORAGE, JSON.stringify(attempt));
  else sessionStorage.removeItem(ATTEMPT_STORAGE);
}

function showMessage(text: string, kind: "info" | "error" = "info"): void {
  const message = $("#message");
  message.textContent = text;
  message.dataset.kind = kind;
  message.hidden = text === "";
}

function renderTiers(event: EventInfo, previous: GuestCheckoutRequest | null): void {
  $("#event-title").textContent = event.title;
  $("#event-date").textContent = event.startsAt ? new Date(event.startsAt).toUTCString() : "";
  const rows = event.tiers.map((tier) => {
    const row = document.createElement("tr");
    row.dataset.tierId = tier.id;
    const left = tier.seatsLeft === null ? "" : ` (${tier.seatsLeft} left)`;
    const quantity = previous?.items.find((item) => item.tierId === tier.id)?.quantity ?? 0;
    row.innerHTML = `<td class="name"></td><td class="price"></td>
      <td><input type="number" min="0" step="1" inputmode="numeric"></td>`;
    row.querySelector(".name")!.textContent = tier.name + left;
    row.querySelector(".price")!.textContent = money(tier.unitAmount, event.currency);
    const input = row.querySelector("input")!;
    input.max = String(Math.min(tier.maxPerOrder, tier.seatsLeft ?? tier.maxPerOrder));
    input.value = String(quantity);
    input.name = `quantity-${tier.id}`;
    input.setAttribute("aria-label", `Quantity of ${tier.name}`);
    return row;
  });
  $("#tiers tbody").replaceChildren(...rows);
  if (previous?.email) $<HTMLInputElement>("#email").value = previous.email;
}

function readCart(eventId: string): GuestCheckoutRequest {
  const items = [...document.querySelectorAll<HTMLTableRowElement>("#tiers tbody tr")]
    .map((row) => ({
      tierId: row.dataset.tierId ?? "",
      quantity: Number(row.querySelector("input")?.value ?? "0"),
    }))
    .filter((item) => Number.isInteger(item.quantity) && item.quantity > 0);
  return {
    eventId,
    items,
    email: $<HTMLInputElement>("#email").value.trim(),
    successUrl: `${location.origin}/?session_id={CHECKOUT_SESSION_ID}`,
    cancelUrl: `${location.origin}/?cancelled=1`,
  };
}

async function showOrder(sessionId: string): Promise<void> {
  $("#shop").hidden = true;
  const section = $("#order");
  section.hidden = false;
  $("#order-session").textContent = sessionId;
  const status = $("#order-status");
  // The webhook normally lands before the redirect; poll briefly in case it has not.
  const deadline = Date.now() + 30_000;
  for (;;) {
    let order: OrderInfo | null = null;
    try {
      order = await getJson<OrderInfo>(`/api/orders?session_id=${encodeURIComponent(sessionId)}`);
    } catch {
      order = null;
    }
    const view = order && describeOrder(order);
    if (order && view) {
      status.textContent = view.statusLabel;
      section.dataset.status = order.status;
      $("#order-id").textContent = order.id;
      $("#order-total").textContent = view.total;
      $("#order-items").textContent = view.items;
      const refunded = $("#order-refunded");
      refunded.textContent = view.refunded ?? "";
      refunded.hidden = view.refunded === null;
      // This attempt is done; the next purchase gets a new key.
      if (view.attemptDone) saveAttempt(null);
      if (view.settled) return;
    } else {
      status.textContent = "not found";
    }
    if (Date.now() > deadline) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function main(): Promise<void> {
  const config = await getJson<StorefrontConfig>("/config.json");
  const params = new URLSearchParams(location.search);
  const sessionId = params.get("session_id");
  if (sessionId) return await showOrder(sessionId);

  const supabase = createClient(config.supabaseUrl, config.publishableKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
  const event = await getJson<EventInfo>(`/api/events/${config.eventId}`);
  renderTiers(event, loadAttempt()?.request ?? null);
  if (params.has("cancelled") || location.pathname === "/checkout/cancel") {
    showMessage("Checkout cancelled: your cart is kept.");
  }

  const form = $<HTMLFormElement>("#checkout");
  const pay = $<HTMLButtonElement>("#pay");
  let busy = false;
  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    if (busy) return; // a double click joins the attempt in flight
    const request = readCart(config.eventId);
    if (request.items.length === 0) return showMessage("Choose at least one ticket.", "error");
    if (!form.reportValidity()) return;
    busy = true;
    pay.disabled = true;
    pay.textContent = "Processing…";
    showMessage("");
    // Same cart and email as the stored attempt → same key (e.g. after Back from Checkout).
    const fingerprint = JSON.stringify([request.eventId, request.items, request.email]);
    const stored = loadAttempt();
    const attempt = stored?.fingerprint === fingerprint
      ? stored
      : { key: newIdempotencyKey(), fingerprint, request };
    saveAttempt(attempt);
    const result = await startGuestCheckout(supabase, request, attempt.key);
    if (result.ok) {
      document.body.dataset.checkoutTries = String(result.tries);
      location.assign(result.session.url);
      return;
    }
    if (!result.retryable) saveAttempt(null);
    showMessage(
      result.retryable
        ? `${result.message}. Press Pay to try again (nothing is charged twice).`
        : result.message,
      "error",
    );
    busy = false;
    pay.disabled = false;
    pay.textContent = "Pay";
  });
  // Back from Checkout may restore this page from the back/forward cache, mid-attempt.
  addEventListener("pageshow", (shown) => {
    if (!shown.persisted) return;
    busy = false;
    pay.disabled = false;
    pay.textContent = "Pay";
  });
  form.dataset.ready = "true";
}

main().catch((error) => showMessage(`The storefront could not start: ${error}`, "error"));
