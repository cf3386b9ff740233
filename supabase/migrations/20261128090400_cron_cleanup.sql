-- Scheduled maintenance with pg_cron.
-- Objects: extension pg_cron; jobs 'cleanup-expired-idempotency-keys' (every 15 minutes) and
--          'purge-cron-job-run-details' (daily).
--          The cleanup job calls a procedure that commits after each batch, so a backlog is never
--          deleted in one long transaction.
-- Risks:   jobs are scheduled by name, and cron.schedule with an existing name replaces that
--          job, so re-applying this migration (db reset, a fresh project) never duplicates them.
--          On hosted Supabase, pg_cron must be allowed for the project (it is by default).

create extension if not exists pg_cron;

select cron.schedule(
  'cleanup-expired-idempotency-keys',
  '*/15 * * * *',
  $$call public.run_cleanup_expired_idempotency_keys()$$
);

-- pg_cron logs every run; without a purge that log grows forever.
select cron.schedule(
  'purge-cron-job-run-details',
  '17 3 * * *',
  $$delete from cron.job_run_details where end_time < now() - interval '7 days'$$
);

-- Seat holds that already stopped counting (see the capacity migration): deleted, so that claims
-- never read many.
select cron.schedule(
  'release-lapsed-seat-holds',
  '7,22,37,52 * * * *',
  $$select public.release_lapsed_seat_holds()$$
);
