-- The order lifecycle driven by Stripe's word (verified events, or a session retrieved by a
-- retry or by reconciliation), and the reconciliation of attempts that died between their claim
-- and their record.
-- Objects: type public.webhook_result; functions process_stripe_webhook_event,
--          settle_checkout_session, claim_stuck_checkouts; in private apply_checkout_session_event
--          (with session_mismatch, end_checkout_order, pay_checkout_order) and
--          order_seats_unavailable; index on in-flight leases.
-- Risks:   each change is applied in one transaction under the operation's and the order's
--          locks, so a redelivery, a concurrent duplicate or a retry that asked Stripe itself
--          never applies it twice. State only moves forward: pending → paid | expired |
--          cancelled; a late expiry never undoes paid. A payment that lands after its seats
--          were released is applied only if the seats are still free, otherwise it is recorded
--          (capacity_conflict) for an operator to refund.
-- Lock order: as everywhere (see the checkout migration): the stored event, then the
--          idempotency row → the order → the tiers in id order.

create type public.webhook_result as (
  -- paid | expired | cancelled | awaiting_payment | refund | disputed | noop | ignored
  -- | duplicate | unmatched | mismatch | capacity_conflict | failed
  outcome text,
  order_id uuid,
  detail text
);
comment on type public.webhook_result is 'What processing one Stripe event did.';

-- The first tier of an order that no longer has room for it, or null when all do. Takes each
-- tier's room for the order in id order (the order every seller uses) as a claim does: the
-- order's shard locked, allotment moved to it under all the tier's shards if it had none. The
-- order itself is not counted (it is expired, cancelled or past its hold), so this is "could it
-- take its seats back now"; the status change that follows counts them on the locked shards.
create or replace function private.order_seats_unavailable(p_order_id uuid, p_now timestamptz)
returns uuid
language plpgsql volatile set search_path = ''
as $$
declare
  v_item record;
begin
  for v_item in
    select i.tier_id, i.quantity from public.order_items i where i.order_id = p_order_id order by i.tier_id
  loop
    if private.take_tier_room(v_item.tier_id, p_order_id, v_item.quantity, p_now, 0) is null then
      return v_item.tier_id;
    end if;
  end loop;
  return null;
end;
$$;
comment on function private.order_seats_unavailable(uuid, timestamptz) is
  'Internal: the first tier without room to take an order''s seats back, or null.';

-- The reason a session does not describe its order (its id, amount or currency), or null.
create or replace function private.session_mismatch(p_order public.orders, p_session jsonb)
returns text
language sql immutable set search_path = ''
as $$
  select case
    when p_session -> 'metadata' ->> 'order_id' is not null
         and p_session -> 'metadata' ->> 'order_id' <> p_order.id::text
      then 'metadata.order_id differs from client_reference_id'
    when p_order.stripe_checkout_session_id is not null
         and p_order.stripe_checkout_session_id is distinct from p_session ->> 'id'
      then format('session %s is not the order''s session %s', p_session ->> 'id', p_order.stripe_checkout_session_id)
    when (p_session ->> 'amount_total') is distinct from p_order.amount_total::text
         or lower(p_session ->> 'currency') is distinct from p_order.currency
      then format('session amount %s %s differs from the order''s %s %s', p_session ->> 'amount_total',
                  p_session ->> 'currency', p_order.amount_total, p_order.currency)
  end;
$$;

-- The session ended unpaid (expired, or its delayed payment failed): the pending order ends and
-- its seats are free. The caller holds the operation's and the order's locks.
create or replace function private.end_checkout_order(
  p_order public.orders,
  p_type text,
  p_session_id text,
  p_now timestamptz
)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_order public.orders;
begin
  if p_order.status <> 'pending' then
    return ('noop', p_order.id, format('order is already %s', p_order.status))::public.webhook_result;
  end if;
  update public.orders o
  set status = case when p_type = 'checkout.session.expired' then 'expired' else 'cancelled' end,
      stripe_checkout_session_id = coalesce(o.stripe_checkout_session_id, p_session_id)
  where o.id = p_order.id
  returning o.* into v_order;
  -- Mark the operation's stored response as dead: claim_checkout sees the order ended and
  -- answers the storefront's next retry with a fresh session, never this link.
  update public.stripe_idempotency_keys k
  set metadata = k.metadata || jsonb_build_object('session_ended', p_type, 'session_ended_at', p_now),
      updated_at = p_now
  where k.operation_type = private.checkout_operation()
    and k.operation_id = v_order.checkout_operation_id
    and k.order_id = v_order.id;
  return (v_order.status, v_order.id, null)::public.webhook_result;
end;
$$;

-- Whether a pending order still holds its seats, decided under its shards' locks and on the
-- clock at that moment, not at the transaction's start: a claim that counted the hold as lapsed
-- has then either committed before this instant (and the clock says lapsed) or waits for these
-- locks (and will count the order as paid). When the hold has lapsed the locks are let go again
-- (a rolled-back subtransaction), so the room check that follows takes the tiers' shards in
-- their own order.
create or replace function private.order_hold_live(p_order public.orders, p_now timestamptz)
returns boolean
language plpgsql volatile set search_path = ''
as $$
declare
  v_item record;
begin
  if p_order.status <> 'pending' then
    return false;
  end if;
  begin
    for v_item in
      select i.tier_id from public.order_items i where i.order_id = p_order.id order by i.tier_id
    loop
      perform private.lock_order_shard(v_item.tier_id, p_order.id);
    end loop;
    if p_order.seats_held_until > greatest(p_now, clock_timestamp()) then
      return true; -- the shards stay locked until the payment is applied
    end if;
    raise exception using errcode = 'CKS02', message = 'the hold lapsed';
  exception when sqlstate 'CKS02' then
    return false;
  end;
end;
$$;
comment on function private.order_hold_live(public.orders, timestamptz) is
  'Internal: whether a pending order still holds its seats now, decided under its shards'' locks.';

-- The session completed (paid, or paying by a delayed method). An order that no longer holds
-- its seats (ended, or its grace ran out before this word) takes them back only if they are
-- still free; otherwise the conflict is recorded and nothing is oversold. The caller holds the
-- operation's and the order's locks.
create or replace function private.pay_checkout_order(
  p_order public.orders,
  p_type text,
  p_session jsonb,
  p_now timestamptz
)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_short uuid;
  v_conflict text;
  v_paid_now boolean := p_type <> 'checkout.session.completed'
    or coalesce(p_session ->> 'payment_status', '') in ('paid', 'no_payment_required');
begin
  if p_order.paid_at is not null then
    return ('noop', p_order.id, format('order is already %s', p_order.status))::public.webhook_result;
  end if;
  if exists (select 1 from events.events e where e.id = p_order.event_id and e.status = 'cancelled') then
    v_conflict := 'paid after its event was cancelled';
  elsif not private.order_hold_live(p_order, p_now) then
    v_short := private.order_seats_unavailable(p_order.id, p_now);
    if v_short is not null then
      v_conflict := format('paid after its hold ended and tier %s has no seats left', v_short);
    end if;
  end if;
  if v_conflict is not null then
    -- The money is kept on the order (its PaymentIntent) for reconciliation to refund in full.
    if v_paid_now and p_order.amount_total > 0 then
      update public.orders o
      set status = 'capacity_conflict',
          paid_at = p_now,
          session_completed_at = coalesce(o.session_completed_at, p_now),
          stripe_checkout_session_id = coalesce(o.stripe_checkout_session_id, p_session ->> 'id'),
          stripe_payment_intent_id = coalesce(o.stripe_payment_intent_id, p_session ->> 'payment_intent')
      where o.id = p_order.id;
    elsif not v_paid_now and p_order.status = 'pending' then
      -- A delayed payment method: the session is complete (Stripe can no longer expire it) but
      -- the money is not there yet. Recorded without extending the hold, so that nothing opens
      -- another session for the operation and a cancellation waits for the async event.
      update public.orders o
      set session_completed_at = coalesce(o.session_completed_at, p_now),
          stripe_checkout_session_id = coalesce(o.stripe_checkout_session_id, p_session ->> 'id'),
          stripe_payment_intent_id = coalesce(o.stripe_payment_intent_id, p_session ->> 'payment_intent')
      where o.id = p_order.id;
    end if;
    return ('capacity_conflict', p_order.id, v_conflict || ': refunded by reconciliation')::public.webhook_result;
  end if;

  if not v_paid_now then
    -- A delayed payment method: the money is not there yet. Keep the seats held until the async
    -- event decides (Stripe settles those within days).
    if p_order.status = 'pending' then
      update public.orders o
      set hold_expires_at = greatest(o.hold_expires_at, p_now + interval '14 days'),
          seats_held_until = greatest(o.seats_held_until, p_now + interval '14 days'),
          session_completed_at = coalesce(o.session_completed_at, p_now),
          stripe_checkout_session_id = coalesce(o.stripe_checkout_session_id, p_session ->> 'id'),
          stripe_payment_intent_id = coalesce(o.stripe_payment_intent_id, p_session ->> 'payment_intent')
      where o.id = p_order.id;
    end if;
    return ('awaiting_payment', p_order.id, null)::public.webhook_result;
  end if;

  update public.orders o
  set status = 'paid',
      paid_at = p_now,
      session_completed_at = coalesce(o.session_completed_at, p_now),
      stripe_checkout_session_id = coalesce(o.stripe_checkout_session_id, p_session ->> 'id'),
      stripe_payment_intent_id = coalesce(o.stripe_payment_intent_id, p_session ->> 'payment_intent')
  where o.id = p_order.id;
  return ('paid', p_order.id, null)::public.webhook_result;
end;
$$;

-- Applies one checkout.session.* event to its order, after cross-checking that the session
-- describes it. Raises only on unexpected errors.
create or replace function private.apply_checkout_session_event(
  p_type text,
  p_session jsonb,
  p_now timestamptz default now()
)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_reference text := coalesce(p_session ->> 'client_reference_id', p_session -> 'metadata' ->> 'order_id');
  v_order public.orders;
  v_mismatch text;
begin
  if p_type not in ('checkout.session.completed', 'checkout.session.async_payment_succeeded',
                    'checkout.session.async_payment_failed', 'checkout.session.expired') then
    return ('ignored', null, null)::public.webhook_result;
  end if;
  if v_reference is null or v_reference !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    return ('unmatched', null, 'the session names no order')::public.webhook_result;
  end if;

  -- The one lock order: the order's operation first, then the order (a retry renewing the
  -- same operation takes them in this order too, so the two never deadlock).
  select o.* into v_order from public.orders o where o.id = v_reference::uuid;
  if not found then
    return ('unmatched', null, format('order %s does not exist', v_reference))::public.webhook_result;
  end if;
  perform 1 from public.stripe_idempotency_keys k
  where k.operation_type = private.checkout_operation() and k.operation_id = v_order.checkout_operation_id
  for update;
  select o.* into v_order from public.orders o where o.id = v_order.id for update;

  v_mismatch := private.session_mismatch(v_order, p_session);
  if v_mismatch is not null then
    return ('mismatch', v_order.id, v_mismatch)::public.webhook_result;
  end if;
  if p_type in ('checkout.session.async_payment_failed', 'checkout.session.expired') then
    return private.end_checkout_order(v_order, p_type, p_session ->> 'id', p_now);
  end if;
  return private.pay_checkout_order(v_order, p_type, p_session, p_now);
end;
$$;
comment on function private.apply_checkout_session_event(text, jsonb, timestamptz) is
  'Moves an order forward for a checkout.session.* event, after cross-checking session, amount and currency.';

-- Applies what a retrieved Checkout Session says (a retry or reconciliation asked Stripe):
-- complete → as checkout.session.completed, expired → as checkout.session.expired, open → noop.
-- The same state change as the webhook's, so whichever path hears Stripe first applies it and
-- the other finds it done.
create or replace function public.settle_checkout_session(p_session jsonb, p_now timestamptz default now())
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
begin
  return case p_session ->> 'status'
    when 'complete' then private.apply_checkout_session_event('checkout.session.completed', p_session, p_now)
    when 'expired' then private.apply_checkout_session_event('checkout.session.expired', p_session, p_now)
    else ('noop', null, format('the session is %s', coalesce(p_session ->> 'status', 'unknown')))::public.webhook_result
  end;
end;
$$;
comment on function public.settle_checkout_session(jsonb, timestamptz) is
  'Applies a retrieved Checkout Session''s status to its order, as the matching webhook event would.';

-- A chargeback: recorded on the order it disputes (first word kept), for the operator.
create or replace function private.record_dispute(p_dispute jsonb, p_now timestamptz)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_order_id uuid;
begin
  update public.orders o
  set stripe_dispute_id = coalesce(o.stripe_dispute_id, p_dispute ->> 'id'),
      disputed_at = coalesce(o.disputed_at, p_now)
  where o.stripe_payment_intent_id = p_dispute ->> 'payment_intent'
  returning o.id into v_order_id;
  if v_order_id is null then
    return ('unmatched', null, format('no order was paid by %s', p_dispute ->> 'payment_intent'))::public.webhook_result;
  end if;
  return ('disputed', v_order_id, p_dispute ->> 'reason')::public.webhook_result;
end;
$$;

-- Routes one event's object to the state change it asks for.
create or replace function private.apply_stripe_event(
  p_type text,
  p_object jsonb,
  p_related jsonb,
  p_now timestamptz
)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_refund jsonb;
  v_result public.webhook_result := ('noop', null, 'the charge lists no refund')::public.webhook_result;
begin
  if p_type like 'checkout.session.%' then
    return private.apply_checkout_session_event(p_type, p_object, p_now);
  elsif p_type in ('refund.created', 'refund.updated', 'refund.failed') then
    return private.apply_stripe_refund(p_object, p_now);
  elsif p_type = 'charge.refunded' then
    -- The one lock order across several refunds: all their operations first (in id order),
    -- then the order, which apply_stripe_refund takes for each.
    perform 1 from public.stripe_idempotency_keys k
    join public.refunds r on r.operation_id = k.operation_id
    where k.operation_type = private.refund_operation()
      and r.stripe_refund_id in (
        select x ->> 'id' from jsonb_array_elements(coalesce(p_related -> 'refunds', p_object -> 'refunds' -> 'data', '[]')) x)
    order by k.id
    for update of k;
    -- Each of the charge's refunds, as Stripe listed them (oldest first).
    for v_refund in
      select x from jsonb_array_elements(coalesce(p_related -> 'refunds', p_object -> 'refunds' -> 'data', '[]')) x
      order by (x ->> 'created')::bigint nulls first
    loop
      v_result := private.apply_stripe_refund(v_refund, p_now);
    end loop;
    return v_result;
  elsif p_type = 'charge.dispute.created' then
    return private.record_dispute(p_object, p_now);
  end if;
  return ('ignored', null, null)::public.webhook_result;
end;
$$;

-- Stores a verified Stripe event once and applies it once. A redelivery of a processed event
-- is a duplicate; a concurrent one waits on the row lock and then sees it processed. If
-- applying fails, the event stays unprocessed with its error recorded, and 'failed' is
-- returned so the endpoint answers 500 and Stripe redelivers.
create or replace function public.process_stripe_webhook_event(
  p_event_id text,
  p_type text,
  p_livemode boolean,
  p_payload jsonb,
  p_now timestamptz default now(),
  -- Objects the endpoint fetched from Stripe for this event (charge.refunded: {"refunds": [..]},
  -- the charge's refunds, which the event no longer embeds).
  p_related jsonb default null
)
returns public.webhook_result
language plpgsql volatile set search_path = ''
as $$
declare
  v_event public.stripe_webhook_events;
  v_result public.webhook_result;
  v_state text;
  v_message text;
begin
  insert into public.stripe_webhook_events (stripe_event_id, type, livemode, payload, received_at)
  values (p_event_id, p_type, coalesce(p_livemode, false), p_payload, p_now)
  on conflict (stripe_event_id) do nothing;

  select e.* into v_event from public.stripe_webhook_events e where e.stripe_event_id = p_event_id for update;
  if v_event.processed_at is not null then
    return ('duplicate', null, null)::public.webhook_result;
  end if;

  begin
    v_result := private.apply_stripe_event(p_type, p_payload -> 'data' -> 'object', p_related, p_now);
    update public.stripe_webhook_events e
    set processed_at = p_now,
        attempts = e.attempts + 1,
        last_error = case when v_result.outcome in ('unmatched', 'mismatch', 'capacity_conflict')
                          then left(v_result.outcome || ': ' || coalesce(v_result.detail, ''), 1000) end
    where e.id = v_event.id;
  exception when others then
    -- Not swallowed: recorded on the event and reported as 'failed' (the endpoint answers 500).
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
    update public.stripe_webhook_events e
    set attempts = e.attempts + 1,
        last_error = left(v_state || ': ' || v_message, 1000)
    where e.id = v_event.id;
    return ('failed', null, v_state)::public.webhook_result;
  end;
  return v_result;
end;
$$;
comment on function public.process_stripe_webhook_event(text, text, boolean, jsonb, timestamptz, jsonb) is
  'Stores a verified Stripe event once and applies it once, in one transaction; failures stay retryable.';

-- Attempts whose lease expired long ago: the request that claimed them died between the claim
-- and the record. Takes each over (new lease, SAME key) so the reconciler can settle it with
-- Stripe; the reconciler asks for one at a time, so each lease covers one Stripe call only.
-- SKIP LOCKED keeps concurrent reconcilers and live requests out of each other's way.
create index stripe_idempotency_keys_in_flight_idx on public.stripe_idempotency_keys (lease_expires_at)
  where status = 'in_progress';

-- The stuck attempts of one operation type, each taken over: a new lease, the SAME key, and one
-- more reconcile_attempts (so that an attempt Stripe never answers for is given up after a
-- bound). Only an attempt with an order has parameters to send Stripe again; one without (made
-- by the generic protocol alone) is left to cleanup. Shared by claim_stuck_checkouts and
-- claim_stuck_refunds.
create or replace function private.take_over_stuck_attempts(
  p_operation_type text,
  p_stale_seconds integer,
  p_limit integer,
  p_lease_seconds integer,
  p_now timestamptz,
  p_exclude text[]
)
returns setof public.stripe_idempotency_keys
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  if p_stale_seconds is null or p_stale_seconds < 0 or p_limit is null or p_limit < 1
     or p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
    raise exception using errcode = '22023', message = 'Cannot claim stuck attempts: bad arguments';
  end if;
  for v_row in
    select k.* from public.stripe_idempotency_keys k
    where k.status = 'in_progress'
      and k.operation_type = p_operation_type
      and k.order_id is not null
      and k.lease_expires_at < p_now - make_interval(secs => p_stale_seconds)
      and k.operation_id <> all (coalesce(p_exclude, '{}'))
    order by k.lease_expires_at
    limit p_limit
    for update skip locked
  loop
    perform private.arm_stripe_idempotency_attempt(v_row.id, null, gen_random_uuid(),
      p_now + make_interval(secs => p_lease_seconds), p_now);
    update public.stripe_idempotency_keys k
    set reconcile_attempts = k.reconcile_attempts + 1
    where k.id = v_row.id
    returning k.* into v_row;
    return next v_row;
  end loop;
end;
$$;

create or replace function public.claim_stuck_checkouts(
  p_stale_seconds integer default 600,
  p_limit integer default 50,
  p_lease_seconds integer default 120,
  p_now timestamptz default now(),
  -- Operations this run already handled (left for the next run): not taken again.
  p_exclude text[] default '{}'
)
returns setof public.checkout_claim
language sql volatile set search_path = ''
as $$
  select private.checkout_claim_order(
    private.checkout_claim_of('reconcile', k.operation_id, k.stripe_idempotency_key,
      k.lease_token, k.lease_expires_at, k.attempt, k.reconcile_attempts),
    k.order_id)
  from private.take_over_stuck_attempts(private.checkout_operation(), p_stale_seconds, p_limit,
    p_lease_seconds, p_now, p_exclude) k;
$$;
comment on function public.claim_stuck_checkouts(integer, integer, integer, timestamptz, text[]) is
  'Takes over checkout attempts whose lease expired more than p_stale_seconds ago, for reconciliation.';

revoke execute on function
  public.settle_checkout_session(jsonb, timestamptz),
  public.process_stripe_webhook_event(text, text, boolean, jsonb, timestamptz, jsonb),
  public.claim_stuck_checkouts(integer, integer, integer, timestamptz, text[])
from public, anon, authenticated;

grant execute on function
  public.settle_checkout_session(jsonb, timestamptz),
  public.process_stripe_webhook_event(text, text, boolean, jsonb, timestamptz, jsonb),
  public.claim_stuck_checkouts(integer, integer, integer, timestamptz, text[])
to service_role;
