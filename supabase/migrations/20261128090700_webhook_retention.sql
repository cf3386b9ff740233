-- Retention of Stripe webhook events: a payload holds the buyer's name, email and address, so
-- it is not kept once its event is applied and old enough; the row itself goes later.
-- Objects: column stripe_webhook_events.payload_dropped_at (payload becomes nullable); indexes
--          for the two retention scans; function prune_stripe_webhook_events_batch; procedure
--          run_prune_stripe_webhook_events; pg_cron job 'prune-stripe-webhook-events' (daily).
-- Rules:   only PROCESSED events are touched (an unprocessed one still has to be applied, from
--          its payload, when Stripe redelivers it). By default the payload is dropped 30 days
--          after processing and the row deleted after 90; rows are never deleted before 3 days,
--          Stripe's redelivery window, during which the stored id is what deduplicates.
--          A dropped payload is SQL null with payload_dropped_at set (not jsonb 'null'), so a
--          check constraint can tie the two together.
-- Risks:   SKIP LOCKED keeps the job out of the way of a redelivery holding an event's row; that
--          row waits for the next run. The job commits after each batch.

alter table public.stripe_webhook_events
  alter column payload drop not null,
  add column payload_dropped_at timestamptz,
  add constraint stripe_webhook_events_payload_or_dropped
    check ((payload is null) = (payload_dropped_at is not null)),
  add constraint stripe_webhook_events_dropped_only_when_processed
    check (payload_dropped_at is null or processed_at is not null);
comment on column public.stripe_webhook_events.payload is
  'The verified event as Stripe sent it; null once retention dropped it (payload_dropped_at).';
comment on column public.stripe_webhook_events.payload_dropped_at is
  'When retention dropped the payload of this processed event; the id still deduplicates.';

-- Processed events whose payload is still kept, oldest first; and processed events by age.
create index stripe_webhook_events_payload_kept_idx on public.stripe_webhook_events (processed_at)
  where payload_dropped_at is null and processed_at is not null;
create index stripe_webhook_events_processed_at_idx on public.stripe_webhook_events (processed_at)
  where processed_at is not null;

-- One batch: deletes up to p_batch_size events processed more than p_delete_after ago, then
-- drops the payload of up to p_batch_size events processed more than p_drop_payload_after ago.
create or replace function public.prune_stripe_webhook_events_batch(
  p_drop_payload_after interval default interval '30 days',
  p_delete_after interval default interval '90 days',
  p_batch_size integer default 1000,
  p_now timestamptz default now(),
  out payloads_dropped bigint,
  out rows_deleted bigint
)
language plpgsql volatile set search_path = ''
as $$
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023',
      message = format('Cannot prune webhook events: batch size %s is not positive', p_batch_size);
  end if;
  if p_drop_payload_after is null or p_drop_payload_after < interval '0' then
    raise exception using errcode = '22023',
      message = format('Cannot prune webhook events: payload retention %s is negative', p_drop_payload_after);
  end if;
  if p_delete_after is null or p_delete_after < interval '3 days' then
    raise exception using errcode = '22023',
      message = format('Cannot prune webhook events: rows must be kept 3 days (Stripe''s redelivery window), not %s',
        p_delete_after);
  end if;

  with doomed as (
    select e.id
    from public.stripe_webhook_events e
    where e.processed_at <= p_now - p_delete_after
    order by e.processed_at
    limit p_batch_size
    for update skip locked
  )
  delete from public.stripe_webhook_events e
  using doomed
  where e.id = doomed.id;
  get diagnostics rows_deleted = row_count;

  with stale as (
    select e.id
    from public.stripe_webhook_events e
    where e.payload_dropped_at is null
      and e.processed_at <= p_now - p_drop_payload_after
    order by e.processed_at
    limit p_batch_size
    for update skip locked
  )
  update public.stripe_webhook_events e
  set payload = null,
      payload_dropped_at = p_now
  from stale
  where e.id = stale.id;
  get diagnostics payloads_dropped = row_count;
end;
$$;
comment on function public.prune_stripe_webhook_events_batch(interval, interval, integer, timestamptz) is
  'One retention batch over processed webhook events: deletes old rows, drops old payloads; returns the counts.';

-- What pg_cron runs: batches until both steps find less than a batch, committing after each.
-- Call it at top level. No `set search_path` clause: a procedure with one cannot commit; it
-- names only schema-qualified objects, and the function it calls pins its own search_path.
create or replace procedure public.run_prune_stripe_webhook_events(
  p_drop_payload_after interval default interval '30 days',
  p_delete_after interval default interval '90 days',
  p_batch_size integer default 1000,
  p_now timestamptz default now()
)
language plpgsql
as $$
declare
  v_batch record;
begin
  loop
    select b.payloads_dropped, b.rows_deleted into v_batch
    from public.prune_stripe_webhook_events_batch(p_drop_payload_after, p_delete_after, p_batch_size, p_now) b;
    exit when v_batch.payloads_dropped < p_batch_size and v_batch.rows_deleted < p_batch_size;
    commit;
  end loop;
end;
$$;
comment on procedure public.run_prune_stripe_webhook_events(interval, interval, integer, timestamptz) is
  'pg_cron: webhook retention to completion, committing after each batch (call it at top level).';

revoke execute on function public.prune_stripe_webhook_events_batch(interval, interval, integer, timestamptz)
from public, anon, authenticated;
revoke execute on procedure public.run_prune_stripe_webhook_events(interval, interval, integer, timestamptz)
from public, anon, authenticated;
grant execute on function public.prune_stripe_webhook_events_batch(interval, interval, integer, timestamptz)
to service_role;
grant execute on procedure public.run_prune_stripe_webhook_events(interval, interval, integer, timestamptz)
to service_role;

-- Daily, by name: re-applying replaces the job instead of adding one.
select cron.schedule(
  'prune-stripe-webhook-events',
  '47 3 * * *',
  $$call public.run_prune_stripe_webhook_events()$$
);
