-- Privileges: anon and authenticated can neither read nor write the service tables nor call the
-- idempotency functions; service_role can.
begin;
select plan(29);

set local role anon;
select throws_ok('select * from public.stripe_idempotency_keys', '42501', null, 'anon cannot read idempotency keys');
select throws_ok($$delete from public.stripe_idempotency_keys$$, '42501', null, 'anon cannot delete idempotency keys');
select throws_ok('select * from public.stripe_webhook_events', '42501', null, 'anon cannot read webhook events');
select throws_ok('select * from public.orders', '42501', null, 'anon cannot read orders');
select throws_ok('select * from public.order_items', '42501', null, 'anon cannot read order items');
select throws_ok($$insert into events.events (title) values ('x')$$, '42501', null, 'anon cannot create events');
select throws_ok(
  $$select public.claim_stripe_idempotency('checkout:create', 'op-anon-000000001', 'checkout:create:op-anon-000000001:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid())$$,
  '42501', null, 'anon cannot claim');
select throws_ok($$select * from public.check_stripe_idempotency('checkout:create', 'x')$$, '42501', null, 'anon cannot check');
select throws_ok($$select private.tier_seats_taken(gen_random_uuid())$$, '42501', null,
  'anon cannot reach the private schema''s internals');
select throws_ok($$select public.record_stripe_idempotency('checkout:create', 'x', gen_random_uuid(), 'cs_1', 201, '{}')$$, '42501', null, 'anon cannot record');
select throws_ok($$select public.release_stripe_idempotency('checkout:create', 'x', gen_random_uuid(), true)$$, '42501', null, 'anon cannot release');
select throws_ok('select public.cleanup_expired_idempotency_keys()', '42501', null, 'anon cannot run cleanup');
select throws_ok($$select private.tier_seats_taken(gen_random_uuid())$$, '42501', null, 'anon cannot call capacity helpers');
reset role;

set local role authenticated;
select throws_ok('select * from public.stripe_idempotency_keys', '42501', null, 'authenticated cannot read idempotency keys');
select throws_ok(
  $$insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, request_fingerprint, lease_token, lease_expires_at)
    values ('checkout:create', 'op-auth-000000001', 'checkout:create:op-auth-000000001:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid(), now())$$,
  '42501', null, 'authenticated cannot write idempotency keys');
select throws_ok('select * from public.stripe_webhook_events', '42501', null, 'authenticated cannot read webhook events');
select throws_ok($$update public.orders set status = 'paid'$$, '42501', null, 'authenticated cannot update orders');
select throws_ok(
  $$select public.claim_stripe_idempotency('checkout:create', 'op-auth-000000001', 'checkout:create:op-auth-000000001:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid())$$,
  '42501', null, 'authenticated cannot claim');
select throws_ok($$select * from public.check_stripe_idempotency('checkout:create', 'x')$$, '42501', null, 'authenticated cannot check');
select throws_ok($$select public.record_stripe_idempotency('checkout:create', 'x', gen_random_uuid(), 'cs_1', 201, '{}')$$, '42501', null, 'authenticated cannot record');
select throws_ok($$select public.release_stripe_idempotency('checkout:create', 'x', gen_random_uuid(), true)$$, '42501', null, 'authenticated cannot release');
select throws_ok('select public.cleanup_expired_idempotency_keys()', '42501', null, 'authenticated cannot run cleanup');
reset role;

-- The published catalogue is readable by anyone; drafts are not.
insert into events.events (id, title, status) values
  ('10000000-0000-4000-8000-000000000001', 'Published', 'published'),
  ('10000000-0000-4000-8000-000000000002', 'Draft', 'draft');
set local role anon;
select is(
  (select count(*)::int from events.events where id in ('10000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000002')),
  1, 'anon sees published events only');
reset role;

-- A signed-in buyer reads their own orders and no one else's.
insert into auth.users (id, email) values
  ('20000000-0000-4000-8000-000000000001', 'a@example.com'),
  ('20000000-0000-4000-8000-000000000002', 'b@example.com');
insert into public.orders (event_id, user_id, currency, amount_total, hold_expires_at, seats_held_until) values
  ('10000000-0000-4000-8000-000000000001', '20000000-0000-4000-8000-000000000001', 'usd', 100, now() + interval '30 minutes', now() + interval '90 minutes'),
  ('10000000-0000-4000-8000-000000000001', '20000000-0000-4000-8000-000000000002', 'usd', 200, now() + interval '30 minutes', now() + interval '90 minutes');
set local role authenticated;
do $$ begin
  perform set_config('request.jwt.claims', '{"sub":"20000000-0000-4000-8000-000000000001","role":"authenticated"}', true);
end $$;
select results_eq(
  'select amount_total from public.orders',
  array[100], 'a buyer reads only their own orders');
reset role;

set local role service_role;
select lives_ok(
  $$select public.claim_stripe_idempotency('checkout:create', 'op-service-00000001', 'checkout:create:op-service-00000001:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid())$$,
  'service_role can claim');
select is((select count(*)::int from public.stripe_idempotency_keys where operation_id = 'op-service-00000001'), 1,
  'service_role can read idempotency keys');
select lives_ok('select public.cleanup_expired_idempotency_keys()', 'service_role can run cleanup');
reset role;

reset role;
select ok(not has_schema_privilege('anon', 'private', 'usage')
          and not has_schema_privilege('authenticated', 'private', 'usage')
          and has_schema_privilege('service_role', 'private', 'usage'),
  'only service_role may use the private schema');
set local role authenticated;
select throws_ok($$select private.checkout_operation()$$, '42501', null,
  'authenticated cannot reach the private schema''s internals');
reset role;
select * from finish();
rollback;
