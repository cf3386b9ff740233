-- The operators' view: who may read it, and that each of its questions counts what it says.
begin;
select plan(7);

select ok(not has_table_privilege('anon', 'public.operator_overview', 'select')
          and not has_table_privilege('authenticated', 'public.operator_overview', 'select'),
          'anon and authenticated cannot read the operators'' view');
select ok(has_table_privilege('service_role', 'public.operator_overview', 'select'),
          'service_role can');
select is((select reloptions from pg_class where oid = 'public.operator_overview'::regclass),
          array['security_invoker=true'], 'it runs with the reader''s rights (RLS applies)');

-- A stuck attempt, a live one, and a failed one.
insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key,
  request_fingerprint, status, lease_token, lease_expires_at, last_error, updated_at)
values
  ('refund:create', 'ov-live', 'refund:create:ov-live:00000000-0000-4000-8000-000000000001', repeat('a', 64),
   'in_progress', gen_random_uuid(), now() + interval '1 minute', null, now()),
  ('refund:create', 'ov-stuck', 'refund:create:ov-stuck:00000000-0000-4000-8000-000000000002', repeat('a', 64),
   'in_progress', gen_random_uuid(), now() - interval '1 hour', null, now()),
  ('refund:create', 'ov-failed', 'refund:create:ov-failed:00000000-0000-4000-8000-000000000003', repeat('a', 64),
   'failed', null, null, 'reconcile: gave up', now());

select is((select how_many from public.operator_overview where topic = 'attempts in flight' and item = 'refund:create'),
          1::bigint, 'one attempt in flight');
select is((select how_many from public.operator_overview where topic like 'attempts stuck%' and item = 'refund:create'),
          1::bigint, 'one attempt stuck');
select is((select how_many from public.operator_overview where topic = 'attempts failed in the last 24 hours' and item = 'refund:create'),
          1::bigint, 'one attempt failed');
select is((select count(*) from public.operator_overview where topic like 'cancellation%'), 0::bigint,
          'no cancellation in progress');

select * from finish();
rollback;
