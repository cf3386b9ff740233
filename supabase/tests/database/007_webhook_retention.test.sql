-- Webhook retention: processed events lose their payload after 30 days and their row after 90;
-- unprocessed events are never touched; a redelivery inside Stripe's 3-day window is still a
-- duplicate. The retention job and the committing cleanup procedure are service_role only.
begin;
select plan(37);

-- Structure.
select has_column('public', 'stripe_webhook_events', 'payload_dropped_at', 'events record when their payload was dropped');
select col_is_null('public', 'stripe_webhook_events', 'payload', 'a payload can be dropped');
select function_returns('public', 'prune_stripe_webhook_events_batch',
  array['interval', 'interval', 'integer', 'timestamp with time zone'], 'record');
select function_returns('public', 'cleanup_expired_idempotency_keys_batch',
  array['integer', 'timestamp with time zone'], 'bigint');
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.prokind = 'p'),
  array['run_cleanup_expired_idempotency_keys', 'run_prune_stripe_webhook_events'],
  'the committing jobs are procedures');
select ok(
  (select bool_and(p.proargnames @> array['p_now']) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.proname in ('prune_stripe_webhook_events_batch',
     'run_prune_stripe_webhook_events', 'cleanup_expired_idempotency_keys_batch',
     'run_cleanup_expired_idempotency_keys')),
  'the retention and cleanup routines take p_now');

-- Privileges.
\ir helpers/refused.psql
select * from pg_temp.refused(array['anon', 'authenticated'], array[
  ['select * from public.prune_stripe_webhook_events_batch()', 'prune webhook events'],
  ['call public.run_prune_stripe_webhook_events()', 'run the retention job'],
  ['select public.cleanup_expired_idempotency_keys_batch()', 'run a cleanup batch'],
  ['call public.run_cleanup_expired_idempotency_keys()', 'run the cleanup job']]);
set local role service_role;
-- A clock in the past: nothing is old enough, so nothing changes and nothing commits.
select lives_ok($$select * from public.prune_stripe_webhook_events_batch(p_now => '2000-01-01 00:00+00')$$,
  'service_role can prune webhook events');
select lives_ok($$call public.run_prune_stripe_webhook_events(p_now => '2000-01-01 00:00+00')$$,
  'service_role can run the retention job');
reset role;

-- Behaviour. Start from an empty table (rolled back at the end); t(d) is day d of the test.
delete from public.stripe_webhook_events;
create function pg_temp.t(p_days numeric) returns timestamptz language sql as $$
  select '2030-01-01 00:00+00'::timestamptz + p_days * interval '1 day'
$$;
-- A processed event, stored by the real path (an event type the endpoint ignores).
create function pg_temp.deliver(p_evt text, p_days numeric) returns text language sql as $$
  select (public.process_stripe_webhook_event(p_evt, 'customer.updated', false,
    jsonb_build_object('id', p_evt, 'type', 'customer.updated',
      'data', jsonb_build_object('object', jsonb_build_object('email', 'ada@example.com'))),
    pg_temp.t(p_days))).outcome
$$;
create function pg_temp.prune(p_days numeric, p_batch integer default 1000)
returns table (payloads_dropped bigint, rows_deleted bigint) language sql as $$
  select * from public.prune_stripe_webhook_events_batch(interval '30 days', interval '90 days', p_batch, pg_temp.t(p_days))
$$;
create function pg_temp.kept(p_evt text) returns boolean language sql as $$
  select payload is not null from public.stripe_webhook_events where stripe_event_id = p_evt
$$;

do $$ begin
  perform pg_temp.deliver('evt_ret_old_' || i, 0) from generate_series(1, 3) i;
  perform pg_temp.deliver('evt_ret_recent', 20);
end $$;
-- Unprocessed: its apply failed, and Stripe will redeliver it.
insert into public.stripe_webhook_events (stripe_event_id, type, payload, received_at, attempts, last_error)
values ('evt_ret_unprocessed', 'checkout.session.completed', '{"email": "bob@example.com"}', pg_temp.t(0), 1, 'XX000: boom');

select row_eq('select * from pg_temp.prune(29)', row(0::bigint, 0::bigint), 'nothing is dropped before 30 days');
select row_eq('select * from pg_temp.prune(30, 2)', row(2::bigint, 0::bigint), 'a batch drops at most its size');
select row_eq('select * from pg_temp.prune(30)', row(1::bigint, 0::bigint), 'the next batch drops the rest');
select results_eq(
  $$select stripe_event_id, payload, payload_dropped_at from public.stripe_webhook_events
    where stripe_event_id like 'evt_ret_old_%' order by 1$$,
  $$values ('evt_ret_old_1'::text, null::jsonb, pg_temp.t(30)), ('evt_ret_old_2', null, pg_temp.t(30)),
           ('evt_ret_old_3', null, pg_temp.t(30))$$,
  'processed events older than 30 days keep their row but lose the payload');
select ok(pg_temp.kept('evt_ret_recent'), 'a younger processed event keeps its payload');
select ok(pg_temp.kept('evt_ret_unprocessed'), 'an unprocessed event keeps its payload');
select is(pg_temp.deliver('evt_ret_old_1', 31), 'duplicate', 'a redelivery after the payload is dropped is still a duplicate');
select throws_ok($$update public.stripe_webhook_events set payload = null where stripe_event_id = 'evt_ret_recent'$$,
  '23514', null, 'a payload is only ever dropped with its marker');

select row_eq('select * from pg_temp.prune(89)', row(1::bigint, 0::bigint),
  'rows are kept until 90 days; the younger event''s payload goes once it is 30 days old');
select row_eq('select * from pg_temp.prune(90)', row(0::bigint, 3::bigint), 'processed rows are deleted at 90 days');
select results_eq(
  $$select stripe_event_id, payload from public.stripe_webhook_events order by 1$$,
  $$values ('evt_ret_recent'::text, null::jsonb), ('evt_ret_unprocessed', '{"email": "bob@example.com"}')$$,
  'the old rows are gone; the unprocessed event is untouched');
select row_eq('select * from pg_temp.prune(36500)', row(0::bigint, 1::bigint), 'the last processed row goes after 90 days');
select row_eq(
  $$select payload, payload_dropped_at, processed_at from public.stripe_webhook_events where stripe_event_id = 'evt_ret_unprocessed'$$,
  row('{"email": "bob@example.com"}'::jsonb, null::timestamptz, null::timestamptz),
  'an unprocessed event is never touched, however old');

-- Stripe redelivers for up to 3 days: even the shortest row retention allowed keeps the id.
select throws_ok($$select * from public.prune_stripe_webhook_events_batch(interval '0', interval '2 days 23 hours')$$,
  '22023', null, 'rows cannot be deleted within Stripe''s 3-day redelivery window');
do $$ begin perform pg_temp.deliver('evt_ret_redelivered', 100); end $$;
select row_eq($$select * from public.prune_stripe_webhook_events_batch(interval '0', interval '3 days', 1000, pg_temp.t(102.9))$$,
  row(1::bigint, 0::bigint), 'with the shortest retentions the payload goes at once but the row stays');
select is(pg_temp.deliver('evt_ret_redelivered', 102.9), 'duplicate', 'a redelivery within 3 days is deduplicated');

-- The procedure does the same work, committing after each full batch: inside a transaction
-- block (as here) a run that needs a second batch is refused at its first commit.
do $$ begin perform pg_temp.deliver('evt_ret_batch_' || i, 200) from generate_series(1, 3) i; end $$;
select throws_ok($$call public.run_prune_stripe_webhook_events(interval '30 days', interval '90 days', 2, pg_temp.t(231))$$,
  '2D000', null, 'the retention job commits after a full batch');
select lives_ok($$call public.run_prune_stripe_webhook_events(interval '30 days', interval '90 days', 1000, pg_temp.t(231))$$,
  'a run that fits one batch needs no commit');
select is((select count(*)::int from public.stripe_webhook_events where stripe_event_id like 'evt_ret_batch_%' and payload is null), 3,
  'the job dropped their payloads');

-- pg_cron: the retention job exists once, daily, calling the procedure; scheduling it again
-- (re-applying the migration) replaces it.
select row_eq(
  $$select count(*)::int, min(schedule), min(command) from cron.job where jobname = 'prune-stripe-webhook-events'$$,
  row(1, '47 3 * * *'::text, 'call public.run_prune_stripe_webhook_events()'::text),
  'the retention job exists once and runs the procedure daily');
do $do$ begin
  perform cron.schedule('prune-stripe-webhook-events', '47 3 * * *', $$call public.run_prune_stripe_webhook_events()$$);
end $do$;
select is((select count(*)::int from cron.job where jobname = 'prune-stripe-webhook-events'), 1,
  'scheduling the retention job again does not duplicate it');

select * from finish();
rollback;
