-- Orders and their items.
-- Objects: public.orders (its rules: private.order_rules, constraint orders_rules),
--          public.order_items.
-- Risks:   the seats an order holds are counted in 20261128090150_tier_capacity.sql, by
--          triggers on these tables, so every writer of an order keeps the count.

create table public.orders (
  id uuid primary key default private.uuid_v7(), -- time-ordered: see private.uuid_v7
  event_id uuid not null references events.events (id),
  user_id uuid references auth.users (id) on delete set null,
  guest_email text,
  guest_name text,
  -- pending → paid | expired | cancelled; paid → partially_refunded → refunded; a payment that
  -- found no seats (or a cancelled event) → capacity_conflict → refunded. Forward only.
  status text not null default 'pending',
  currency text not null,
  amount_total integer not null,
  stripe_checkout_session_id text,
  -- The checkout operation (its client Idempotency-Key) that made this order; lets a webhook
  -- find the operation's idempotency record when the session ends.
  checkout_operation_id text,
  -- The client's address as the platform's proxy saw it, for the pending-hold limits.
  client_address inet,
  -- Where Stripe sends the buyer back; kept so that a retried Stripe call (reconciliation)
  -- sends exactly the parameters of the first one.
  success_url text,
  cancel_url text,
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
  stripe_payment_intent_id text,
  -- Refunds Stripe confirmed (succeeded), in minor units; pending ones are in public.refunds.
  amount_refunded integer not null default 0,
  -- A chargeback was opened (charge.dispute.created): the operator's to answer in Stripe.
  stripe_dispute_id text,
  disputed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
  -- The row's rules: private.order_rules below (constraint orders_rules).
);
-- The rules every order row keeps, as one CHECK calling one function. Postgres reads and plans
-- each CHECK constraint again for every INSERT or UPDATE statement (ExecRelCheck), so eighteen
-- separate ones cost about 90 µs per single-row statement here (a claim, a record, a webhook
-- each run one or two), against about 5 µs for one PL/pgSQL call whose expression is planned
-- once per session. A broken rule raises check_violation (23514) naming it. Same semantics as a
-- CHECK: a rule that is null (an absent optional column) holds. The CHECK depends on the whole
-- row, not on the columns it reads: a migration that drops or renames one of them must replace
-- this function in the same migration.
create or replace function private.order_rules(o public.orders)
returns boolean
language plpgsql immutable set search_path = ''
as $$
begin
  return case
    -- [:space:], not \s: a function body is read again in each session, under its settings.
    when (o.guest_email is null or (length(o.guest_email) <= 254 and o.guest_email ~ '^[^@[:space:]]+@[^@[:space:]]+$')) is false
      then private.rule_broken('orders', 'guest_email is an address of at most 254 characters')
    when (o.guest_name is null or length(o.guest_name) <= 200) is false
      then private.rule_broken('orders', 'guest_name has at most 200 characters')
    -- pending → paid | expired | cancelled; paid → partially_refunded → refunded; a payment that
    -- found no seats (or a cancelled event) → capacity_conflict → refunded. Forward only.
    when (o.status in ('pending', 'paid', 'expired', 'cancelled', 'partially_refunded', 'refunded',
                       'capacity_conflict')) is false
      then private.rule_broken('orders', 'status is a known order status')
    when (o.currency ~ '^[a-z]{3}$') is false then private.rule_broken('orders', 'currency is a lowercase ISO code')
    when (o.amount_total >= 0) is false then private.rule_broken('orders', 'amount_total is not negative')
    when (length(o.checkout_operation_id) <= 150) is false
      then private.rule_broken('orders', 'checkout_operation_id has at most 150 characters')
    when (length(o.success_url) <= 2048 and length(o.cancel_url) <= 2048) is false
      then private.rule_broken('orders', 'success_url and cancel_url have at most 2048 characters')
    when (length(o.stripe_payment_intent_id) <= 255 and length(o.stripe_dispute_id) <= 255) is false
      then private.rule_broken('orders', 'Stripe ids have at most 255 characters')
    -- A buyer is a signed-in user or a guest, never both. (Checkout always sets one; user_id can
    -- only become null later, when the auth user is deleted.)
    when (num_nonnulls(o.user_id, o.guest_email) <= 1) is false
      then private.rule_broken('orders', 'a user or a guest email, not both')
    when ((o.status in ('paid', 'partially_refunded', 'refunded', 'capacity_conflict')) = (o.paid_at is not null)) is false
      then private.rule_broken('orders', 'paid_at is set exactly when the order was paid')
    when (o.amount_refunded between 0 and o.amount_total) is false
      then private.rule_broken('orders', 'amount_refunded is between 0 and amount_total')
    -- The refund states say how much Stripe gave back (a free order stays paid).
    when (o.status <> 'paid' or o.amount_refunded = 0) is false
      then private.rule_broken('orders', 'a paid order has no refund')
    when (o.status <> 'partially_refunded' or o.amount_refunded between 1 and o.amount_total - 1) is false
      then private.rule_broken('orders', 'a partially refunded order has part of its amount back')
    when (o.status <> 'refunded' or o.amount_refunded = o.amount_total) is false
      then private.rule_broken('orders', 'a refunded order has all of its amount back')
    when (o.status not in ('pending', 'expired', 'cancelled') or o.amount_refunded = 0) is false
      then private.rule_broken('orders', 'an unpaid order has no refund')
    when (o.seats_held_until >= o.hold_expires_at) is false
      then private.rule_broken('orders', 'seats_held_until is not before hold_expires_at')
    else true
  end;
end;
$$;
comment on function private.order_rules(public.orders) is
  'The CHECK rules of an order row (constraint orders_rules); raises 23514 naming the rule broken.';
alter table public.orders add constraint orders_rules check (private.order_rules(orders));

comment on table public.orders is 'A buyer''s order for one event; pending until Stripe says paid or the session ends.';
comment on column public.orders.amount_total is 'Sum of the items in minor units, computed from ticket_tiers.';
comment on column public.orders.hold_expires_at is 'The Checkout Session''s expires_at; past it, a retry asks Stripe before renewing.';
comment on column public.orders.seats_held_until is 'Until when a pending order''s seats count, unless Stripe ends the session first: expires_at plus a grace for a missed webhook.';
-- Unique where set. Partial, so that a claim's new order (no session, no PaymentIntent yet)
-- adds no entry to either: a null key is an entry too, and every claim's went to the same
-- leaf, where concurrent claims queued for its lock.
create unique index orders_stripe_checkout_session_id_key on public.orders (stripe_checkout_session_id)
  where stripe_checkout_session_id is not null;
create unique index orders_stripe_payment_intent_id_key on public.orders (stripe_payment_intent_id)
  where stripe_payment_intent_id is not null;
create index orders_user_id_idx on public.orders (user_id) where user_id is not null;
create index orders_event_id_idx on public.orders (event_id);
-- Payments that found no seats, for reconciliation to refund.
create index orders_capacity_conflict_idx on public.orders (updated_at) where status = 'capacity_conflict';
-- An operation's orders that Stripe said were paid, or whose payment is under way: a claim
-- refuses to open a new payment while one exists (private.checkout_operation_payment, whose
-- WHERE is this predicate). Pending orders are left out, so a claim adds no entry here: with
-- every order in it, each claim put its random client key into a random leaf of an index as
-- large as the history, a full-page image in the WAL after every checkpoint (one per claim at
-- 1,000,000 orders). It grows with paid orders only.
create index orders_paid_operation_idx on public.orders (checkout_operation_id)
  where paid_at is not null or (status = 'pending' and session_completed_at is not null);
-- Pending holds per buyer (user, or guest email and address) and per client address, for the
-- hold-flooding limits. Each leaves out the rows whose key is null (a guest has no user id,
-- a user no email, a request may have no address), which its reader's equality never matches,
-- so a claim adds only the entries that can be read.
create index orders_pending_guest_idx on public.orders (guest_email, client_address, created_at)
  where status = 'pending' and guest_email is not null;
create index orders_pending_user_idx on public.orders (user_id, created_at)
  where status = 'pending' and user_id is not null;
create index orders_pending_address_idx on public.orders (client_address, created_at)
  where status = 'pending' and client_address is not null;

create table public.order_items (
  order_id uuid not null references public.orders (id) on delete cascade,
  -- The tier is referenced through its counter row (tier_id, shard) → private.tier_capacity →
  -- events.ticket_tiers (see 20261128090150_tier_capacity.sql): a claim already holds that
  -- row's lock, so the foreign key's check adds no lock, where a key on the tier's own row
  -- made every buyer of a hot tier share one row lock (a multixact rewritten by each).
  tier_id uuid not null,
  -- The tier's counter row this item's seats count on: private.order_capacity_shard(order_id,
  -- the tier's shards). The counting trigger refuses any other value on insert, and
  -- public.check_tier_capacity reports one written later (or with triggers off).
  shard smallint not null,
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

