-- Cancelling an event: nothing more is sold, every open Checkout Session is expired at Stripe
-- and every payment is refunded for what is left, exactly once whoever runs the job and however
-- often (the cancel-event endpoint works through the orders in bounded batches).
-- Objects: functions cancel_event, event_cancellation_work, event_cancellation_progress; in
--          private: cancellation_operation_id, cancellation_step.
-- Design:  each order's refund is the refund:create operation cancel.<event id>.<order id>, so a
--          second caller, a retry after a crash or a later run finds the same operation: it
--          replays, takes over a dead attempt (same Stripe key), or is refused while another
--          caller holds it. Nothing is queued: what is left to do is read from the orders.
-- Risks:   a payment that lands after the cancellation is recorded as capacity_conflict (see
--          pay_checkout_order) and refunded by this job or by reconciliation, whichever claims
--          it first; the reservation makes the second find nothing left.

-- The refund operation of one order of a cancelled event.
create or replace function private.cancellation_operation_id(p_event_id uuid, p_order_id uuid)
returns text
language sql immutable set search_path = ''
as $$ select 'cancel.' || p_event_id::text || '.' || p_order_id::text; $$;

-- What the cancellation still has to do for one order:
--   expire: a pending order with an open session: expire it at Stripe;
--   refund: money to give back (new operation, a dead attempt to take over, or a retry after
--           Stripe refused, up to p_max_attempts);
--   wait:   someone else's step is under way (a live lease, an attempt whose session is not
--           recorded yet, a payment by a delayed method being settled);
--   failed: Stripe refused the refund p_max_attempts times, or the refund failed later: left to
--           an operator (refund-order), the reason kept on the refund row;
--   done:   nothing is held and nothing is owed.
create or replace function private.cancellation_step(
  p_order public.orders,
  p_key public.stripe_idempotency_keys,
  p_max_attempts integer,
  p_now timestamptz
)
returns text
language plpgsql stable set search_path = ''
as $$
declare
  v_left integer;
begin
  if p_order.status = 'pending' then
    return case when p_order.stripe_checkout_session_id is not null and p_order.session_completed_at is null
                then 'expire' else 'wait' end;
  end if;
  if p_order.status not in ('paid', 'partially_refunded', 'capacity_conflict') then
    return 'done';
  end if;
  if p_key.status = 'in_progress' then
    return case when p_key.lease_expires_at > p_now then 'wait' else 'refund' end;
  end if;
  if p_order.stripe_payment_intent_id is null then
    -- Nothing to name at Stripe: free, or paid before refunds existed (the Dashboard's, then).
    return case when p_order.amount_total = 0 then 'done' else 'failed' end;
  end if;
  v_left := private.order_refundable(p_order);
  if v_left = 0 then
    -- Another refund holds what is left; it may still give it back.
    return case when exists (select 1 from public.refunds r where r.order_id = p_order.id and r.status = 'reserved')
                then 'wait' else 'done' end;
  end if;
  if p_key.id is null or (p_key.status = 'failed' and p_key.attempt < p_max_attempts) then
    return 'refund';
  end if;
  return 'failed';
end;
$$;

-- Marks the event cancelled (once: a second call keeps the first time and reason). From then on
-- new checkouts are refused (CK008) and retries of existing ones open no session. CE001 when
-- the event does not exist.
create or replace function public.cancel_event(
  p_event_id uuid,
  p_reason text default null,
  p_now timestamptz default now()
)
returns events.events
language plpgsql volatile set search_path = ''
as $$
declare
  v_event events.events;
begin
  update events.events e
  set status = 'cancelled',
      cancelled_at = coalesce(e.cancelled_at, p_now),
      -- The first call's reason, even none: a later call changes nothing.
      cancellation_reason = case when e.cancelled_at is null then left(p_reason, 500) else e.cancellation_reason end
  where e.id = p_event_id
  returning e.* into v_event;
  if not found then
    raise exception using errcode = 'CE001',
      message = format('Cannot cancel event: event %s does not exist', p_event_id), detail = p_event_id::text;
  end if;
  return v_event;
end;
$$;
comment on function public.cancel_event(uuid, text, timestamptz) is
  'Marks an event cancelled (idempotent); the cancel-event endpoint then expires and refunds its orders.';

-- The next orders the cancellation can act on now (expire or refund), in order id order,
-- skipping p_exclude (what this run already handled).
create or replace function public.event_cancellation_work(
  p_event_id uuid,
  p_limit integer default 10,
  p_exclude uuid[] default '{}',
  p_max_attempts integer default 5,
  p_now timestamptz default now()
)
returns table (order_id uuid, step text, stripe_checkout_session_id text, operation_id text)
language sql stable set search_path = ''
as $$
  select x.id, x.step, x.stripe_checkout_session_id, private.cancellation_operation_id(p_event_id, x.id)
  from (
    select o.id, o.stripe_checkout_session_id, private.cancellation_step(o, k, p_max_attempts, p_now) as step
    from public.orders o
    left join public.stripe_idempotency_keys k
      on k.operation_type = private.refund_operation()
     and k.operation_id = private.cancellation_operation_id(p_event_id, o.id)
    where o.event_id = p_event_id
      and o.status in ('pending', 'paid', 'partially_refunded', 'capacity_conflict')
      and o.id <> all (coalesce(p_exclude, '{}'))
  ) x
  where x.step in ('expire', 'refund')
  order by x.id
  limit p_limit;
$$;
comment on function public.event_cancellation_work(uuid, integer, uuid[], integer, timestamptz) is
  'The next orders of a cancelled event to expire or refund.';

-- Where a cancellation stands, counted from the rows:
--   refunded: refunds of the event's orders made for the cancellation (or, after it, for a
--             payment that found the event cancelled), not failed;
--   expired:  orders whose checkout ended since the cancellation;
--   failed:   orders whose refund Stripe refused (see cancellation_step);
--   remaining: orders with a step still to take or under way; 0 means completed.
create or replace function public.event_cancellation_progress(
  p_event_id uuid,
  p_max_attempts integer default 5,
  p_now timestamptz default now()
)
returns table (status text, refunded bigint, expired bigint, failed bigint, remaining bigint)
language sql stable set search_path = ''
as $$
  with e as (
    select * from events.events where id = p_event_id
  ), steps as (
    select private.cancellation_step(o, k, p_max_attempts, p_now) as step
    from public.orders o
    left join public.stripe_idempotency_keys k
      on k.operation_type = private.refund_operation()
     and k.operation_id = private.cancellation_operation_id(p_event_id, o.id)
    where o.event_id = p_event_id
      and o.status in ('pending', 'paid', 'partially_refunded', 'capacity_conflict')
  ), counts as (
    select count(*) filter (where step = 'failed') as failed,
           count(*) filter (where step in ('expire', 'refund', 'wait')) as remaining
    from steps
  )
  select case when c.remaining = 0 then 'completed' else 'in_progress' end,
         (select count(*) from public.refunds r join public.orders o on o.id = r.order_id, e
          where o.event_id = p_event_id and r.status not in ('failed', 'canceled')
            and (r.source = 'cancellation' or (r.source = 'capacity_conflict' and r.created_at >= e.cancelled_at))),
         (select count(*) from public.orders o, e
          where o.event_id = p_event_id and o.status in ('expired', 'cancelled') and o.updated_at >= e.cancelled_at),
         c.failed, c.remaining
  from counts c, e
  where e.status = 'cancelled';
$$;
comment on function public.event_cancellation_progress(uuid, integer, timestamptz) is
  'Where an event''s cancellation stands: refunded, expired, failed, remaining; no row if the event is not cancelled.';

revoke execute on function
  public.cancel_event(uuid, text, timestamptz),
  public.event_cancellation_work(uuid, integer, uuid[], integer, timestamptz),
  public.event_cancellation_progress(uuid, integer, timestamptz)
from public, anon, authenticated;

grant execute on function
  public.cancel_event(uuid, text, timestamptz),
  public.event_cancellation_work(uuid, integer, uuid[], integer, timestamptz),
  public.event_cancellation_progress(uuid, integer, timestamptz)
to service_role;
