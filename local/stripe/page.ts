/**
 * The hosted checkout page a session's `url` points to: a small page with "Pay" and "Cancel"
 * buttons. "Pay" completes the session and redirects to `success_url`; "Cancel" returns to
 * `cancel_url` (the session stays open, as on Stripe).
 */
import { majorUnits, sleep } from "./helpers.ts";
import { decodePathSegment } from "./routes.ts";
import type { CheckoutSession } from "./session-object.ts";
import { changeSession, findSession, type SessionState } from "./sessions.ts";

/** What the page answers with: the sessions, the request's id, and the server's lifetime. */
export interface PageContext {
  state: SessionState;
  requestId: string;
  /** Aborted when the server closes, so "Pay" stops waiting for the webhook delivery. */
  closed: AbortSignal;
}

/** How long "Pay" waits for the webhook delivery before redirecting anyway. */
const PAY_DELIVERY_WAIT_MS = 15_000;

/**
 * GET /c/pay/:id shows the session; POST /c/pay/:id/pay completes it, POST /c/pay/:id/cancel
 * goes back to cancel_url.
 */
export async function pageResponse(request: Request, context: PageContext): Promise<Response> {
  const { state, requestId } = context;
  const path = new URL(request.url).pathname;
  const match = /^\/c\/pay\/([^/]+)(?:\/(pay|cancel))?$/.exec(path);
  const action = match?.[2] ?? null;
  const headers = { "content-type": "text/html; charset=utf-8", "request-id": requestId };
  const allowed = action ? "POST" : "GET";
  if (match && request.method !== allowed) {
    return new Response("<!doctype html><p>Method not allowed</p>", {
      status: 405,
      headers: { ...headers, allow: allowed },
    });
  }
  const session = match ? findSession(state, decodePathSegment(match[1] ?? "")) : undefined;
  if (!session) return new Response("<!doctype html><p>Not found</p>", { status: 404, headers });
  if (action === null || session.status !== "open") {
    return new Response(renderPage(session), {
      status: action === null ? 200 : 409,
      headers,
    });
  }
  if (action === "cancel") return redirect(session.cancel_url, session, headers);
  const delivered = changeSession(state, { session, type: "checkout.session.completed" });
  await Promise.race([delivered, sleep(PAY_DELIVERY_WAIT_MS, context.closed)]);
  return redirect(session.success_url, session, headers);
}

// Stripe fills in the {CHECKOUT_SESSION_ID} template of the redirect URLs.
function redirect(
  target: string | null,
  session: CheckoutSession,
  headers: Record<string, string>,
): Response {
  if (!target) return new Response(renderPage(session), { status: 200, headers });
  const location = target.replaceAll("{CHECKOUT_SESSION_ID}", session.id);
  return new Response(null, { status: 303, headers: { ...headers, location } });
}

function renderPage(session: CheckoutSession): string {
  const currency = (session.currency ?? "").toUpperCase();
  const amount = formatAmount(session.amount_total, session.currency);
  const id = escapeHtml(session.id);
  const actions = session.status === "open"
    ? `<form method="post" action="/c/pay/${id}/pay"><button type="submit">Pay</button></form>
${
      session.cancel_url
        ? `<form method="post" action="/c/pay/${id}/cancel"><button type="submit">Cancel</button></form>`
        : ""
    }`
    : "";
  const email = session.customer_email ? `<p>Email: ${escapeHtml(session.customer_email)}</p>` : "";
  return `<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Checkout (local Stripe)</title>
<style>body{font:16px system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}
form{display:inline-block;margin-right:.5rem}button{font-size:1rem;padding:.5rem 1.25rem}</style>
<main data-session-id="${id}" data-status="${session.status}">
<p><small>Local Stripe-compatible server: test mode, no card needed</small></p>
<h1>Pay ${escapeHtml(currency)} ${escapeHtml(amount)}</h1>
${email}<p>Session: <code>${id}</code></p>
<p>Status: <strong id="status">${session.status}</strong></p>
${actions}
</main></html>
`;
}

function formatAmount(amount: number | null, currency: string | null): string {
  return amount === null ? "0" : majorUnits(amount, currency ?? "");
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}
