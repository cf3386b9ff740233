-- Cleanup deletes expired rows in batches, keeps live rows and attempts in flight; cron runs it
-- through a procedure that commits after each batch.
begin;
select plan(19);

create function pg_temp.row(p_id text, p_status text, p_expires timestamptz, p_lease timestamptz)
returns void language sql as $$
  insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key,
    request_fingerprint, status, lease_token, lease_expires_at, response_status, response_body, expires_at)
  values ('checkout:create', p_id, 'checkout:create:' || p_id || ':' || gen_random_uuid(), repeat('a', 64),
    p_status, case when p_status = 'in_progress' then gen_random_uuid() end, p_lease,
    case when p_status = 'completed' then 201 end, case when p_status = 'completed' then '{}'::jsonb end,
    p_expires)
$$;

-- Start from an empty table (rolled back at the end) so counts do not depend on the database.
delete from public.stripe_idempotency_keys;

-- now = 2030-01-02 00:00; 25 expired completed rows, 3 expired failed, 2 live completed,
-- one expired in-flight attempt whose lease is still live, one whose lease has run out.
select pg_temp.row('expired-done-' || lpad(i::text, 4, '0'), 'completed', '2030-01-01 00:00+00', null)
from generate_series(1, 25) i;
select pg_temp.row('expired-failed-' || i, 'failed', '2030-01-01 00:00+00', null) from generate_series(1, 3) i;
select pg_temp.row('live-done-' || i, 'completed', '2030-01-03 00:00+00', null) from generate_series(1, 2) i;
select pg_temp.row('inflight-live', 'in_progress', '2030-01-01 00:00+00', '2030-01-02 00:05+00');
select pg_temp.row('inflight-dead', 'in_progress', '2030-01-01 00:00+00', '2030-01-01 23:00+00');

select throws_ok('select public.cleanup_expired_idempotency_keys(0)', '22023', null, 'a batch size of 0 is rejected');
select is(public.cleanup_expired_idempotency_keys(7, '2030-01-02 00:00+00'), 29::bigint,
  'cleanup deletes every expired row across several batches and returns the count');
select results_eq(
  $$select operation_id from public.stripe_idempotency_keys where operation_id in
    ('live-done-1', 'live-done-2', 'inflight-live', 'inflight-dead') order by 1$$,
  $$values ('inflight-live'::text), ('live-done-1'), ('live-done-2')$$,
  'live rows and the attempt whose lease is live survive; the dead attempt goes');
select is(public.cleanup_expired_idempotency_keys(7, '2030-01-02 00:00+00'), 0::bigint,
  'a second run finds nothing');
select is(public.cleanup_expired_idempotency_keys(10000, '2030-01-02 00:06+00'), 1::bigint,
  'once its lease runs out the expired attempt is deleted too');
select is(public.cleanup_expired_idempotency_keys(10000, '2030-01-03 00:00+00'), 2::bigint,
  'rows are deleted when expires_at is reached');

-- An expired operation is gone for good: the same operation id can start afresh.
select is(
  (select outcome from public.claim_stripe_idempotency('checkout:create', 'expired-done-0001',
    'checkout:create:expired-done-0001:55555555-5555-4555-8555-555555555555', repeat('a', 64),
    gen_random_uuid(), 60, '{}', '2030-01-03 00:00+00')),
  'created', 'after cleanup the operation id can be claimed anew');

-- One batch deletes at most its size; the procedure pg_cron calls commits after each full batch,
-- which a transaction block (as here) refuses.
select pg_temp.row('batch-' || i, 'completed', '2030-01-04 00:00+00', null) from generate_series(1, 10) i;
select is(public.cleanup_expired_idempotency_keys_batch(4, '2030-01-05 00:00+00'), 4::bigint,
  'one batch deletes at most its size');
select throws_ok($$call public.run_cleanup_expired_idempotency_keys(4, '2030-01-05 00:00+00')$$, '2D000', null,
  'the cron procedure commits after a full batch');
select lives_ok($$call public.run_cleanup_expired_idempotency_keys(10000, '2030-01-05 00:00+00')$$,
  'a run that fits one batch needs no commit');
select is((select count(*)::int from public.stripe_idempotency_keys where operation_id like 'batch-%'), 0,
  'the procedure deleted the rest');

-- Each batch starts where the previous one ended: the rows earlier batches of the same
-- transaction deleted stay in the expires_at index until it commits, and are not walked again.
-- Counted in index entries returned: about one per row, not one per row per earlier batch.
select pg_temp.row('walk-' || i, 'completed', '2030-01-06 00:00+00'::timestamptz + i * interval '1 second', null)
from generate_series(1, 100) i;
create temp table walk_before as
  select pg_stat_get_xact_tuples_returned('public.stripe_idempotency_keys_expires_at_idx'::regclass) as n;
set local track_functions = 'pl';
create temp table pauses_before as
  select coalesce((select calls from pg_stat_xact_user_functions
                   where schemaname = 'private' and funcname = 'cleanup_pause'), 0) as n;
select is(public.cleanup_expired_idempotency_keys(10, '2030-01-07 00:00+00'), 100::bigint,
  '100 expired rows deleted in batches of 10');
-- It yields between batches (claims commit meanwhile): one pause after each of the 10 full ones.
select is((select calls from pg_stat_xact_user_functions where schemaname = 'private' and funcname = 'cleanup_pause')
          - (select n from pauses_before), 10::bigint, 'it paused after each full batch');
reset track_functions;
select cmp_ok(pg_stat_get_xact_tuples_returned('public.stripe_idempotency_keys_expires_at_idx'::regclass)
              - (select n from walk_before), '<=', 200::bigint,
  'the expires_at index returned about one entry per deleted row');
select cmp_ok(pg_stat_get_xact_tuples_returned('public.stripe_idempotency_keys_expires_at_idx'::regclass)
              - (select n from walk_before), '>=', 100::bigint,
  '(it was read: the batches went through it)');

-- pg_cron: the cleanup job exists exactly once, every 15 minutes, and the run log is purged.
select is((select count(*)::int from cron.job where jobname = 'cleanup-expired-idempotency-keys'), 1,
  'the cleanup job exists once');
select row_eq(
  $$select schedule, command from cron.job where jobname = 'cleanup-expired-idempotency-keys'$$,
  row('*/15 * * * *'::text, 'call public.run_cleanup_expired_idempotency_keys()'::text),
  'it runs the committing cleanup procedure every 15 minutes');
select is((select count(*)::int from cron.job where jobname = 'purge-cron-job-run-details'
            and command like '%delete from cron.job_run_details%'), 1,
  'the cron run log is purged by its own job');
-- Re-running the migration's schedule call replaces the job instead of adding one.
do $do$ begin
  perform cron.schedule('cleanup-expired-idempotency-keys', '*/15 * * * *',
    $$call public.run_cleanup_expired_idempotency_keys()$$);
end $do$;
select is((select count(*)::int from cron.job where jobname = 'cleanup-expired-idempotency-keys'), 1,
  'scheduling the job again does not duplicate it');

select * from finish();
rollback;
