-- Refunds on top of the idempotency protocol: operation refund:create, whose claim reserves the
-- amount against the order in the same transaction, so that refunds running at once can never
-- together give back more than was paid.
-- Objects: table public.refunds; type public.refund_claim; functions claim_refund,
--          record_refund, release_refund, claim_stuck_refunds, capacity_conflicts_to_refund;
--          in private: refund_operation, order_refundable, refund_status_rank, apply_refund_status,
--          sync_order_refunds, apply_stripe_refund, refund_claim_of.
-- Protocol: claim (reserve) → refunds.create with the claim's key → record (the refund and the
--          order's state) or release (Stripe answered: the reservation is given back; no answer:
--          kept, and the next attempt takes over with the SAME key, so Stripe hands back the one
--          refund it made).
-- States:  a refund is reserved (claimed, not yet seen by Stripe) → pending | requires_action →
--          succeeded | failed | canceled, forward only (succeeded → failed too: a bank can return
--          a refund later). The order's amount_refunded is the sum
--          of its succeeded refunds and its state follows: paid → partially_refunded →
--          refunded; capacity_conflict → refunded. A full refund frees the order's seats (the
--          capacity triggers count paid and partially refunded orders only).
-- Reserved: what an order can still refund = amount_total - every refund not failed or
--          canceled (reserved and pending included).
-- Lock order: as everywhere (see the checkout migration): the idempotency row → the order →
--          (its refunds) → the tiers in id order.
-- Errors:  RF001 order not found; RF002 order not paid; RF003 amount above what is left
--          (DETAIL: what is left), or no PaymentIntent to name; RF004 refund not recorded yet (a
--          webhook is early: retried); RF005 an earlier attempt of the operation is in doubt;
--          22023 bad argument.

create table public.refunds (
  id uuid primary key default gen_random_uuid(),
  order_id uuid not null references public.orders (id),
  -- The refund:create operation that made it; null for a refund made outside (Dashboard).
  operation_id text unique check (length(operation_id) <= 150),
  -- Who asked: an operator (refund-order), an event's cancellation, reconciliation for a
  -- payment that found no seats, or Stripe (a refund made elsewhere, learnt from a webhook).
  source text not null check (source in ('operator', 'cancellation', 'capacity_conflict', 'stripe')),
  amount integer not null check (amount > 0),
  currency text not null check (currency ~ '^[a-z]{3}$'),
  reason text check (reason in ('requested_by_customer', 'duplicate', 'fraudulent')),
  status text not null default 'reserved'
    check (status in ('reserved', 'pending', 'requires_action', 'succeeded', 'failed', 'canceled')),
  stripe_refund_id text unique check (length(stripe_refund_id) <= 255),
  -- Stripe's failure_reason, or why the attempt failed (Stripe's refusal), for the operator.
  last_error text check (length(last_error) <= 1000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check (status = 'reserved' or stripe_refund_id is not null or status = 'failed')
);
comment on table public.refunds is 'One row per refund of an order: reserved by a refund:create claim, then as Stripe says.';
comment on column public.refunds.status is 'reserved (claimed, not yet seen by Stripe) → pending | requires_action → succeeded | failed | canceled; forward only.';
create index refunds_order_id_idx on public.refunds (order_id);
-- Refunds not settled yet, for the operators' view.
create index refunds_open_idx on public.refunds (updated_at)
  where status in ('reserved', 'pending', 'requires_action');

create trigger refunds_set_updated_at before update on public.refunds
  for each row execute function private.set_updated_at();

alter table public.refunds enable row level security;
revoke all on public.refunds from anon, authenticated;
grant select, insert, update, delete on public.refunds to service_role;
-- A signed-in buyer may read the refunds of their own orders.
grant select on public.refunds to authenticated;
create policy "buyers read their own refunds" on public.refunds
  for select to authenticated
  using (exists (
    select 1 from public.orders o where o.id = order_id and o.user_id = (select auth.uid())
  ));

create type public.refund_claim as (
  -- created | takeover | retry | reconcile: call refunds.create with stripe_idempotency_key and
  -- these parameters, then record. replay: answer response_status/response_body. conflict |
  -- mismatch: refuse.
  outcome text,
  stripe_idempotency_key text,
  lease_token uuid,
  lease_expires_at timestamptz,
  attempt integer,
  response_status integer,
  response_body jsonb,
  operation_id text,
  refund_id uuid,
  order_id uuid,
  payment_intent text,
  amount integer,
  currency text,
  reason text,
  reconcile_attempts integer
);
comment on type public.refund_claim is 'What claim_refund decided, with the refund the Stripe call must make.';

-- The operation type of a refund, written once.
create or replace function private.refund_operation()
returns text
language plpgsql immutable set search_path = ''
as $$ begin return 'refund:create'; end; $$;

-- What an order can still refund: its total less every refund that may still give money back.
create or replace function private.order_refundable(p_order public.orders)
returns integer
language plpgsql stable set search_path = ''
as $$
begin
  return p_order.amount_total - coalesce((
    select sum(r.amount) from public.refunds r
    where r.order_id = p_order.id and r.status not in ('failed', 'canceled')), 0);
end;
$$;

-- Refund states in their only direction: a later word never moves one back.
create or replace function private.refund_status_rank(p_status text)
returns integer
language sql immutable set search_path = ''
as $$
  -- A refund can fail after it succeeded (the customer's bank returns it; Stripe says
  -- refund.failed), never the other way round.
  select case p_status when 'reserved' then 0 when 'requires_action' then 1 when 'pending' then 2
    when 'succeeded' then 3 when 'failed' then 4 when 'canceled' then 4 end;
$$;

-- The order's amount_refunded and state, from its succeeded refunds (the caller holds the order's
-- lock). A full refund makes it refunded, which frees its seats through the capacity triggers.
create or replace function private.sync_order_refunds(p_order_id uuid)
returns public.orders
language plpgsql volatile set search_path = ''
as $$
declare
  v_order public.orders;
begin
  update public.orders o
  set amount_refunded = x.refunded,
      status = case
        when o.status not in ('paid', 'partially_refunded', 'refunded', 'capacity_conflict') then o.status
        when x.refunded >= o.amount_total and o.amount_total > 0 then 'refunded'
        when o.status = 'capacity_conflict' then o.status
        -- A full refund that failed after it succeeded: the seats went back on sale meanwhile and
        -- the money is held again, as for a payment that found no seats; reconciliation gives
        -- it back again.
        when o.status = 'refunded' then 'capacity_conflict'
        when x.refunded > 0 then 'partially_refunded'
        else o.status
      end
  from (select coalesce(sum(r.amount) filter (where r.status = 'succeeded'), 0)::integer as refunded
        from public.refunds r where r.order_id = p_order_id) x
  where o.id = p_order_id
  returning o.* into v_order;
  return v_order;
end;
$$;

-- Moves one refund row forward to what Stripe says (status, Stripe id, failure), never back;
-- then the order follows. The caller holds the order's lock. Returns whether anything changed.
create or replace function private.apply_refund_status(
  p_refund public.refunds,
  p_stripe_refund jsonb
)
returns boolean
language plpgsql volatile set search_path = ''
as $$
declare
  v_status text := p_stripe_refund ->> 'status';
begin
  if private.refund_status_rank(v_status) is null then
    raise exception using errcode = '22023',
      message = format('Cannot apply refund %s: unknown status %s', p_stripe_refund ->> 'id', v_status);
  end if;
  if private.refund_status_rank(v_status) <= private.refund_status_rank(p_refund.status)
     and p_refund.stripe_refund_id is not distinct from p_stripe_refund ->> 'id' then
    return false;
  end if;
  update public.refunds r
  set stripe_refund_id = p_stripe_refund ->> 'id',
      status = case when private.refund_status_rank(v_status) > private.refund_status_rank(r.status)
                    then v_status else r.status end,
      last_error = coalesce(left(p_stripe_refund ->> 'failure_reason', 1000), r.last_error)
  where r.id = p_refund.id;
  perform private.sync_order_refunds(p_refund.order_id);
  return true;
end;
$$;

-- The 201 body of a refund: Stripe's refund id, the order, the amount, both states.
create or replace function private.refund_response(p_refund public.refunds, p_order public.orders)
returns jsonb
language sql immutable set search_path = ''
as $$
  select jsonb_build_object('refundId', p_refund.stripe_refund_id, 'orderId', p_order.id,
    'amount', p_refund.amount, 'status', p_refund.status, 'orderStatus', p_order.status);
$$;

create or replace function private.refund_claim_of(
  p_claim public.stripe_idempotency_claim,
  p_operation_id text,
  p_refund public.refunds,
  p_order public.orders
)
returns public.refund_claim
language plpgsql immutable set search_path = ''
as $$
begin
  return row(p_claim.outcome, p_claim.stripe_idempotency_key, p_claim.lease_token,
             p_claim.lease_expires_at, p_claim.attempt, p_claim.response_status, p_claim.response_body,
             p_operation_id, p_refund.id, p_refund.order_id, p_order.stripe_payment_intent_id,
             p_refund.amount, p_refund.currency, p_refund.reason, null)::public.refund_claim;
end;
$$;

-- The claim of a refund: the idempotency claim, and for an attempt that will call Stripe the
-- reservation of its amount under the order's lock (RF001..RF003 raise and undo everything).
--   created | retry: the order must be paid (or a payment that found no seats) and have at least
--     p_amount left (null: all that is left); the refund row is reserved for it.
--   takeover: the dead attempt's reservation and parameters, to send again with the same key.
--   replay | conflict | mismatch: as claim_stripe_idempotency says; nothing is checked.
create or replace function public.claim_refund(
  p_operation_id text,
  p_stripe_idempotency_key text,
  p_request_fingerprint text,
  p_lease_token uuid,
  p_order_id uuid,
  p_amount integer default null,
  p_reason text default null,
  p_source text default 'operator',
  p_lease_seconds integer default 60,
  p_now timestamptz default now()
)
returns public.refund_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_claim public.stripe_idempotency_claim;
  v_order public.orders;
  v_refund public.refunds;
  v_left integer;
  v_amount integer;
begin
  if p_order_id is null or (p_amount is not null and p_amount < 1)
     or p_source is null or p_source not in ('operator', 'cancellation', 'capacity_conflict')
     or (p_reason is not null and p_reason not in ('requested_by_customer', 'duplicate', 'fraudulent')) then
    raise exception using errcode = '22023',
      message = 'Cannot refund order: an order, a positive amount, a known reason and source are required';
  end if;

  v_claim := public.claim_stripe_idempotency(private.refund_operation(), p_operation_id,
    p_stripe_idempotency_key, p_request_fingerprint, p_lease_token, p_lease_seconds,
    jsonb_build_object('order_id', p_order_id, 'source', p_source), p_now, null);
  if v_claim.outcome in ('replay', 'conflict', 'mismatch') then
    return private.refund_claim_of(v_claim, p_operation_id, null, null);
  end if;

  -- The one lock order: the operation's row (locked by the claim) → the order.
  select o.* into v_order from public.orders o where o.id = p_order_id for update;
  if not found then
    raise exception using errcode = 'RF001',
      message = format('Cannot refund order: order %s does not exist', p_order_id), detail = p_order_id::text;
  end if;
  select r.* into v_refund from public.refunds r where r.operation_id = p_operation_id for update;
  if v_claim.outcome = 'takeover' and v_refund.status = 'reserved' then
    return private.refund_claim_of(v_claim, p_operation_id, v_refund, v_order);
  end if;
  if v_refund.status = 'reserved' then
    -- Its attempt's record is gone (deleted by hand: cleanup keeps refund attempts in flight),
    -- so nobody knows whether Stripe made it: never send a second one.
    raise exception using errcode = 'RF005',
      message = format('Cannot refund order: an earlier attempt of %s may have reached Stripe', p_operation_id);
  end if;
  if v_refund.status in ('pending', 'requires_action', 'succeeded') then
    -- The operation made its refund and cleanup has since forgotten the operation (after 24
    -- hours): answer with that refund (now as a replay), never refund again.
    v_claim := private.claim_of('replay', public.record_stripe_idempotency(private.refund_operation(),
      p_operation_id, p_lease_token, v_refund.stripe_refund_id, 201, private.refund_response(v_refund, v_order),
      jsonb_build_object('refund_id', v_refund.stripe_refund_id), p_now));
    return private.refund_claim_of(v_claim, p_operation_id, null, null);
  end if;

  if v_order.status not in ('paid', 'partially_refunded', 'refunded', 'capacity_conflict') then
    raise exception using errcode = 'RF002',
      message = format('Cannot refund order: order %s is %s, not paid', v_order.id, v_order.status),
      detail = v_order.status;
  end if;
  if v_order.stripe_payment_intent_id is null and v_order.amount_total > 0 then
    raise exception using errcode = 'RF003',
      message = format('Cannot refund order: order %s has no PaymentIntent recorded (paid before refunds existed): refund it in the Stripe Dashboard', v_order.id),
      detail = '0';
  end if;
  v_left := private.order_refundable(v_order);
  v_amount := coalesce(p_amount, v_left);
  if v_amount < 1 or v_amount > v_left then
    raise exception using errcode = 'RF003',
      message = format('Cannot refund order: %s is more than the %s %s left to refund', v_amount, v_left, v_order.currency),
      detail = v_left::text;
  end if;

  if v_refund.id is null then
    insert into public.refunds as r (order_id, operation_id, source, amount, currency, reason, created_at, updated_at)
    values (v_order.id, p_operation_id, p_source, v_amount, v_order.currency, p_reason, p_now, p_now)
    returning r.* into v_refund;
  else
    -- A retry (Stripe answered the last attempt, which gave its reservation back) or a takeover
    -- of an attempt whose row was settled meanwhile: reserve again.
    update public.refunds r
    set status = 'reserved', amount = v_amount, stripe_refund_id = null, last_error = null
    where r.id = v_refund.id
    returning r.* into v_refund;
  end if;
  update public.stripe_idempotency_keys k set order_id = v_order.id
  where k.operation_type = private.refund_operation() and k.operation_id = p_operation_id;
  return private.refund_claim_of(v_claim, p_operation_id, v_refund, v_order);
end;
$$;
comment on function public.claim_refund(text, text, text, uuid, uuid, integer, text, text, integer, timestamptz) is
  'Atomic refund claim: idempotency claim plus the reservation of the amount against the order, in one statement.';

-- Completes a refund attempt with the Refund Stripe made: the refund row and the order's state
-- follow it, and the 201 body is built here (with the order's state after it) and stored for
-- replays. Returns that body.
create or replace function public.record_refund(
  p_operation_id text,
  p_lease_token uuid,
  p_stripe_refund jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
  v_refund public.refunds;
  v_order public.orders;
  v_body jsonb;
begin
  v_row := private.leased_attempt(private.refund_operation(), p_operation_id, p_lease_token, 'record');
  if v_row.status = 'completed' then
    if v_row.lease_token = p_lease_token and v_row.stripe_resource_id = p_stripe_refund ->> 'id' then
      return v_row.response_body;
    end if;
    raise exception using errcode = 'SI002',
      message = format('Cannot record refund %s: it is already completed with %s', p_operation_id, v_row.stripe_resource_id);
  end if;

  select o.* into v_order from public.orders o where o.id = v_row.order_id for update;
  select r.* into v_refund from public.refunds r where r.operation_id = p_operation_id for update;
  if v_refund.id is null or v_refund.amount is distinct from (p_stripe_refund ->> 'amount')::integer
     or v_order.stripe_payment_intent_id is distinct from p_stripe_refund ->> 'payment_intent' then
    raise exception using errcode = '22023',
      message = format('Cannot record refund %s: Stripe''s refund does not match the reservation', p_operation_id);
  end if;
  perform private.apply_refund_status(v_refund, p_stripe_refund);
  select r.* into v_refund from public.refunds r where r.id = v_refund.id;
  select o.* into v_order from public.orders o where o.id = v_order.id;

  v_body := private.refund_response(v_refund, v_order);
  perform public.record_stripe_idempotency(private.refund_operation(), p_operation_id, p_lease_token,
    v_refund.stripe_refund_id, 201, v_body, jsonb_build_object('refund_id', v_refund.stripe_refund_id), p_now);
  return v_body;
end;
$$;
comment on function public.record_refund(text, uuid, jsonb, timestamptz) is
  'Completes a refund attempt (lease holder only): the refund and the order follow Stripe''s Refund; returns the 201 body.';

-- Ends a failed refund attempt. Stripe answered (key burnt): the reservation is given back
-- (the refund row failed, with the reason). No answer: the reservation stays for the takeover,
-- which sends the same key and amount.
create or replace function public.release_refund(
  p_operation_id text,
  p_lease_token uuid,
  p_key_consumed boolean,
  p_error text default null,
  p_now timestamptz default now()
)
returns text
language plpgsql volatile set search_path = ''
as $$
declare
  v_status text;
begin
  v_status := public.release_stripe_idempotency(private.refund_operation(), p_operation_id, p_lease_token,
    p_key_consumed, p_error, p_now);
  if v_status = 'failed' then
    perform 1 from public.orders o
    where o.id = (select k.order_id from public.stripe_idempotency_keys k
                  where k.operation_type = private.refund_operation() and k.operation_id = p_operation_id)
    for update;
    update public.refunds r
    set status = 'failed', last_error = left(p_error, 1000)
    where r.operation_id = p_operation_id and r.status = 'reserved';
  end if;
  return v_status;
end;
$$;
comment on function public.release_refund(text, uuid, boolean, text, timestamptz) is
  'Ends a failed refund attempt; gives the reservation back only when Stripe answered.';

-- Applies a Refund object Stripe sent (refund.created / refund.updated, or one listed for a
-- charge.refunded): the known refund moves forward; a refund made outside this project (the
-- Dashboard) is added to its order. A refund Stripe made for an attempt not recorded yet
-- raises RF004, so that the event is delivered again after the record (or reconciliation).
create or replace function private.apply_stripe_refund(p_stripe_refund jsonb, p_now timestamptz)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_refund public.refunds;
  v_order public.orders;
  v_reference text := p_stripe_refund -> 'metadata' ->> 'order_id';
begin
  select r.* into v_refund from public.refunds r where r.stripe_refund_id = p_stripe_refund ->> 'id';
  if found then
    -- The one lock order: the refund's operation → its order.
    perform 1 from public.stripe_idempotency_keys k
    where k.operation_type = private.refund_operation() and k.operation_id = v_refund.operation_id
    for update;
    select o.* into v_order from public.orders o where o.id = v_refund.order_id for update;
    select r.* into v_refund from public.refunds r where r.id = v_refund.id for update;
    if not private.apply_refund_status(v_refund, p_stripe_refund) then
      return ('noop', v_order.id, format('refund is already %s', v_refund.status))::public.webhook_result;
    end if;
    select o.* into v_order from public.orders o where o.id = v_order.id;
    return ('refund', v_order.id, format('refund %s, order %s', p_stripe_refund ->> 'status', v_order.status))::public.webhook_result;
  end if;

  select o.* into v_order from public.orders o
  where o.stripe_payment_intent_id = p_stripe_refund ->> 'payment_intent'
  for update;
  if not found then
    return ('unmatched', null, format('no order was paid by %s', p_stripe_refund ->> 'payment_intent'))::public.webhook_result;
  end if;
  if exists (select 1 from public.refunds r where r.order_id = v_order.id and r.status = 'reserved')
     and (v_reference is null or v_reference = v_order.id::text) then
    raise exception using errcode = 'RF004',
      message = format('Cannot apply refund %s yet: a refund of order %s is in flight', p_stripe_refund ->> 'id', v_order.id);
  end if;
  insert into public.refunds as r (order_id, source, amount, currency, status, stripe_refund_id, reason, created_at, updated_at)
  values (v_order.id, 'stripe', (p_stripe_refund ->> 'amount')::integer, lower(p_stripe_refund ->> 'currency'),
          'reserved', p_stripe_refund ->> 'id',
          case when p_stripe_refund ->> 'reason' in ('requested_by_customer', 'duplicate', 'fraudulent')
               then p_stripe_refund ->> 'reason' end, p_now, p_now)
  returning r.* into v_refund;
  perform private.apply_refund_status(v_refund, p_stripe_refund);
  select o.* into v_order from public.orders o where o.id = v_order.id;
  return ('refund', v_order.id, format('refund %s made outside, order %s', p_stripe_refund ->> 'status', v_order.status))::public.webhook_result;
end;
$$;
comment on function private.apply_stripe_refund(jsonb, timestamptz) is
  'Internal to the webhook: moves a refund forward to what Stripe says, or adds one made outside.';

-- Refund attempts whose lease expired long ago (the request died between Stripe and the
-- record): each taken over with its SAME key, so the reconciler's refunds.create gets back the
-- refund Stripe made, if it made one. One at a time, like claim_stuck_checkouts.
create or replace function public.claim_stuck_refunds(
  p_stale_seconds integer default 600,
  p_limit integer default 50,
  p_lease_seconds integer default 120,
  p_now timestamptz default now(),
  p_exclude text[] default '{}'
)
returns setof public.refund_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
  v_claim public.refund_claim;
begin
  for v_row in
    select * from private.take_over_stuck_attempts(private.refund_operation(), p_stale_seconds,
      p_limit, p_lease_seconds, p_now, p_exclude)
  loop
    v_claim := private.refund_claim_of(private.claim_of('reconcile', v_row), v_row.operation_id,
      (select r from public.refunds r where r.operation_id = v_row.operation_id),
      (select o from public.orders o where o.id = v_row.order_id));
    v_claim.lease_token := v_row.lease_token;
    v_claim.lease_expires_at := v_row.lease_expires_at;
    v_claim.reconcile_attempts := v_row.reconcile_attempts;
    return next v_claim;
  end loop;
end;
$$;
comment on function public.claim_stuck_refunds(integer, integer, integer, timestamptz, text[]) is
  'Takes over refund attempts whose lease expired more than p_stale_seconds ago, for reconciliation.';

-- Orders whose payment found no seats (or whose event was cancelled) and that still have money
-- to give back, oldest first: reconciliation refunds each in full (operation
-- conflict.<order id>), exactly once whoever runs it. An order whose refund Stripe refused
-- p_max_attempts times is left for an operator (the refund row keeps the reason).
create or replace function public.capacity_conflicts_to_refund(
  p_limit integer default 50,
  p_max_attempts integer default 5,
  p_exclude uuid[] default '{}'
)
returns table (order_id uuid, operation_id text)
language sql stable set search_path = ''
as $$
  select o.id, 'conflict.' || o.id::text
  from public.orders o
  left join public.stripe_idempotency_keys k
    on k.operation_type = private.refund_operation() and k.operation_id = 'conflict.' || o.id::text
  where o.status = 'capacity_conflict'
    and o.id <> all (coalesce(p_exclude, '{}'))
    -- Another refund (the event's cancellation) may hold all of it already; without a
    -- PaymentIntent (a free order) there is nothing to give back.
    and o.stripe_payment_intent_id is not null
    and private.order_refundable(o) > 0
    and (k.id is null or (k.status = 'failed' and k.attempt < p_max_attempts))
  order by o.updated_at
  limit p_limit;
$$;
comment on function public.capacity_conflicts_to_refund(integer, integer, uuid[]) is
  'Payments that found no seats and still wait for their automatic refund (operation conflict.<order id>).';

revoke execute on function
  public.claim_refund(text, text, text, uuid, uuid, integer, text, text, integer, timestamptz),
  public.record_refund(text, uuid, jsonb, timestamptz),
  public.release_refund(text, uuid, boolean, text, timestamptz),
  public.claim_stuck_refunds(integer, integer, integer, timestamptz, text[]),
  public.capacity_conflicts_to_refund(integer, integer, uuid[])
from public, anon, authenticated;

grant execute on function
  public.claim_refund(text, text, text, uuid, uuid, integer, text, text, integer, timestamptz),
  public.record_refund(text, uuid, jsonb, timestamptz),
  public.release_refund(text, uuid, boolean, text, timestamptz),
  public.claim_stuck_refunds(integer, integer, integer, timestamptz, text[]),
  public.capacity_conflicts_to_refund(integer, integer, uuid[])
to service_role;
