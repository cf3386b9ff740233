-- Orders and their items, and the capacity they hold.
-- Objects: public.orders, public.order_items, view-free capacity function
--          private.tier_seats_taken(uuid, timestamptz).
-- Risks:   capacity is counted from rows (paid orders plus pending holds that Stripe has not
--          ended and whose grace has not run out), never from a counter, so a hold frees its
--          seats without any job running. Callers that sell seats must lock the tier row first
--          (see the checkout claim).

create table public.orders (
  id uuid primary key default private.uuid_v7(), -- time-ordered: see private.uuid_v7
  event_id uuid not null references events.events (id),
  user_id uuid references auth.users (id) on delete set null,
  guest_email text check (guest_email is null or (length(guest_email) <= 254 and guest_email ~ '^[^@\s]+@[^@\s]+$')),
  guest_name text check (guest_name is null or length(guest_name) <= 200),
  -- pending → paid | expired | cancelled; paid → partially_refunded → refunded; a payment that
  -- found no seats (or a cancelled event) → capacity_conflict → refunded. Forward only.
  status text not null default 'pending'
    check (status in ('pending', 'paid', 'expired', 'cancelled', 'partially_refunded', 'refunded',
                      'capacity_conflict')),
  currency text not null check (currency ~ '^[a-z]{3}$'),
  amount_total integer not null check (amount_total >= 0),
  stripe_checkout_session_id text unique,
  -- The checkout operation (its client Idempotency-Key) that made this order; lets a webhook
  -- find the operation's idempotency record when the session ends.
  checkout_operation_id text check (length(checkout_operation_id) <= 150),
  -- The client's address as the platform's proxy saw it, for the pending-hold limits.
  client_address inet,
  -- Where Stripe sends the buyer back; kept so that a retried Stripe call (reconciliation)
  -- sends exactly the parameters of the first one.
  success_url text check (length(success_url) <= 2048),
  cancel_url text check (length(cancel_url) <= 2048),
  -- The Checkout Session's expires_at: after it, a retry asks Stripe what became of the session.
  hold_expires_at timestamptz not null,
  -- Until when the pending seats count: Stripe's word (the expired event, or a retrieve) ends a
  -- hold at once; this grace after expires_at only covers a webhook that never arrives, so a
  -- payment made in the session's last seconds still finds its seats.
  seats_held_until timestamptz not null,
  -- Stripe said the session is complete but the money is not there yet (delayed payment method).
  session_completed_at timestamptz,
  paid_at timestamptz,
  -- The PaymentIntent that paid (from the completed session): what a refund names.
  stripe_payment_intent_id text unique check (length(stripe_payment_intent_id) <= 255),
  -- Refunds Stripe confirmed (succeeded), in minor units; pending ones are in public.refunds.
  amount_refunded integer not null default 0,
  -- A chargeback was opened (charge.dispute.created): the operator's to answer in Stripe.
  stripe_dispute_id text check (length(stripe_dispute_id) <= 255),
  disputed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- A buyer is a signed-in user or a guest, never both. (Checkout always sets one; user_id can
  -- only become null later, when the auth user is deleted.)
  check (num_nonnulls(user_id, guest_email) <= 1),
  check ((status in ('paid', 'partially_refunded', 'refunded', 'capacity_conflict')) = (paid_at is not null)),
  check (amount_refunded between 0 and amount_total),
  -- The refund states say how much Stripe gave back (a free order stays paid).
  check (status <> 'paid' or amount_refunded = 0),
  check (status <> 'partially_refunded' or amount_refunded between 1 and amount_total - 1),
  check (status <> 'refunded' or amount_refunded = amount_total),
  check (status not in ('pending', 'expired', 'cancelled') or amount_refunded = 0),
  check (seats_held_until >= hold_expires_at)
);
comment on table public.orders is 'A buyer''s order for one event; pending until Stripe says paid or the session ends.';
comment on column public.orders.amount_total is 'Sum of the items in minor units, computed from ticket_tiers.';
comment on column public.orders.hold_expires_at is 'The Checkout Session''s expires_at; past it, a retry asks Stripe before renewing.';
comment on column public.orders.seats_held_until is 'Until when a pending order''s seats count, unless Stripe ends the session first: expires_at plus a grace for a missed webhook.';
create index orders_user_id_idx on public.orders (user_id) where user_id is not null;
create index orders_event_id_idx on public.orders (event_id);
-- Payments that found no seats, for reconciliation to refund.
create index orders_capacity_conflict_idx on public.orders (updated_at) where status = 'capacity_conflict';
-- Every order an operation made: a claim refuses to open a new payment while one is paid.
create index orders_checkout_operation_id_idx on public.orders (checkout_operation_id)
  where checkout_operation_id is not null;
-- Pending holds per buyer (user, or guest email and address) and per client address, for the
-- hold-flooding limits.
create index orders_pending_guest_idx on public.orders (guest_email, client_address, created_at) where status = 'pending';
create index orders_pending_user_idx on public.orders (user_id, created_at) where status = 'pending';
create index orders_pending_address_idx on public.orders (client_address, created_at) where status = 'pending';

create table public.order_items (
  order_id uuid not null references public.orders (id) on delete cascade,
  tier_id uuid not null references events.ticket_tiers (id),
  -- What the buyer was shown at Stripe; a retried Stripe call must send the same name again.
  product_name text not null check (length(product_name) between 1 and 500),
  quantity integer not null check (quantity between 1 and 100),
  unit_amount integer not null check (unit_amount >= 0),
  amount integer generated always as (quantity * unit_amount) stored,
  primary key (order_id, tier_id)
);
comment on table public.order_items is 'Seats of one tier in an order, priced when the order was made.';
create index order_items_tier_id_idx on public.order_items (tier_id);

create trigger orders_set_updated_at before update on public.orders
  for each row execute function private.set_updated_at();

alter table public.orders enable row level security;
alter table public.order_items enable row level security;

-- Revoke first: older projects grant every new table to anon and authenticated by default.
revoke all on public.orders, public.order_items from anon, authenticated;
grant select, insert, update, delete on public.orders, public.order_items to service_role;
-- A signed-in buyer may read their own orders (and nothing else); guests go through the API.
grant select on public.orders, public.order_items to authenticated;
create policy "buyers read their own orders" on public.orders
  for select to authenticated
  using (user_id = (select auth.uid()));
create policy "buyers read their own order items" on public.order_items
  for select to authenticated
  using (exists (
    select 1 from public.orders o where o.id = order_id and o.user_id = (select auth.uid())
  ));

