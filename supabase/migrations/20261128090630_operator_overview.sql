-- The operators' first look, for Supabase Studio: `select * from public.operator_overview;`
-- One row per question, with how many, since when, and where to look next.
-- Objects: view public.operator_overview (security_invoker; service_role and Studio only).
-- Rows:    attempts in flight / stuck (per operation type), attempts failed in the last 24 hours
--          (reconciliation gave up, or Stripe refused), capacity conflicts waiting for their
--          refund / refunded, refunds pending / failed, cancellations of the last 90 days in
--          progress (one row per event, with its refunded / expired / failed / remaining counts)
--          and disputes.
-- Risks:   read-only; it scans the in-flight and open-refund indexes and the small sets it
--          counts, never the history of orders (the partial indexes keep it cheap).

-- What the view counts that no other index covers.
create index stripe_idempotency_keys_failed_idx on public.stripe_idempotency_keys (updated_at)
  where status = 'failed';
create index orders_disputed_idx on public.orders (disputed_at) where disputed_at is not null;

create view public.operator_overview with (security_invoker = true) as
  select 'attempts in flight'::text as topic, k.operation_type as item, count(*) as how_many,
         min(k.updated_at) as oldest,
         'public.stripe_idempotency_keys where status = ''in_progress'' and lease_expires_at > now()'::text as look_at
  from public.stripe_idempotency_keys k
  where k.status = 'in_progress' and k.lease_expires_at > now()
  group by k.operation_type
  union all
  select 'attempts stuck (lease expired, reconciliation settles them)', k.operation_type, count(*),
         min(k.lease_expires_at), 'reconcile-checkouts; last_error and reconcile_attempts on the row'
  from public.stripe_idempotency_keys k
  where k.status = 'in_progress' and k.lease_expires_at <= now()
  group by k.operation_type
  union all
  select 'attempts failed in the last 24 hours', k.operation_type, count(*), min(k.updated_at),
         'last_error on the row (reconcile: … means reconciliation gave up)'
  from public.stripe_idempotency_keys k
  where k.status = 'failed' and k.updated_at > now() - interval '24 hours'
  group by k.operation_type
  union all
  select 'capacity conflicts waiting for their refund', null, count(*), min(o.updated_at),
         'public.orders where status = ''capacity_conflict''; reconciliation refunds them'
  from public.orders o
  where o.status = 'capacity_conflict'
  having count(*) > 0
  union all
  select 'capacity conflicts refunded', null, count(*), min(r.created_at),
         'public.refunds where source = ''capacity_conflict'''
  from public.refunds r
  where r.source = 'capacity_conflict' and r.status = 'succeeded'
  having count(*) > 0
  union all
  select 'refunds ' || r.status, r.source, count(*), min(r.updated_at),
         'public.refunds (last_error says why a refund failed)'
  from public.refunds r
  where r.status in ('reserved', 'pending', 'requires_action', 'failed')
  group by r.status, r.source
  union all
  select 'cancellation ' || p.status, e.title || ' (' || e.id || ')', p.remaining, e.cancelled_at,
         format('refunded %s, expired %s, failed %s, remaining %s: call cancel-event again',
                p.refunded, p.expired, p.failed, p.remaining)
  from events.events e
  cross join lateral public.event_cancellation_progress(e.id) p
  -- Cancellations of the last 90 days (each is counted from its event's orders; older ones have
  -- long been driven to completion by their job, and counting them all would grow with history).
  where e.status = 'cancelled' and e.cancelled_at > now() - interval '90 days' and p.status <> 'completed'
  union all
  select 'disputes opened in the last 30 days', null, count(*), min(o.disputed_at),
         'public.orders where disputed_at is not null: answer them in the Stripe Dashboard'
  from public.orders o
  where o.disputed_at > now() - interval '30 days'
  having count(*) > 0;
comment on view public.operator_overview is
  'Operators: attempts in flight, stuck and failed, capacity conflicts and their refunds, refunds pending or failed, cancellations in progress, disputes.';

revoke all on public.operator_overview from public, anon, authenticated;
grant select on public.operator_overview to service_role;
