-- Behaviour of the claim → record | release protocol, every outcome, with a moved clock.
begin;
select plan(44);

-- Fixed actors: two attempts (A then B) for one operation, and a clock starting at t0.
create temp table t (name text primary key, value text);
insert into t values
  ('t0', '2030-01-01 12:00:00+00'),
  ('key_a', 'checkout:create:op-protocol-000001:aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa'),
  ('key_b', 'checkout:create:op-protocol-000001:bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb'),
  ('key_c', 'checkout:create:op-protocol-000001:cccccccc-cccc-4ccc-8ccc-cccccccccccc'),
  ('lease_a', 'a0000000-0000-4000-8000-00000000000a'),
  ('lease_b', 'b0000000-0000-4000-8000-00000000000b'),
  ('lease_c', 'c0000000-0000-4000-8000-00000000000c'),
  ('fp', repeat('f', 64)),
  ('other_fp', repeat('e', 64));
create function pg_temp.v(p text) returns text language sql as $$ select value from t where name = p $$;
create function pg_temp.at(p_seconds int) returns timestamptz language sql
  as $$ select pg_temp.v('t0')::timestamptz + make_interval(secs => p_seconds) $$;
create function pg_temp.claim(p_key text, p_lease text, p_fp text, p_seconds int)
returns public.stripe_idempotency_claim language sql as $$
  select public.claim_stripe_idempotency('checkout:create', 'op-protocol-000001', pg_temp.v(p_key),
    pg_temp.v(p_fp), pg_temp.v(p_lease)::uuid, 30, '{"event_id":"e1"}'::jsonb, pg_temp.at(p_seconds))
$$;
-- The statements a holder of p_lease runs at second p_at: record session p_session, or release.
create function pg_temp.record_sql(p_lease text, p_session text, p_at int) returns text language sql as $$
  select format($f$select public.record_stripe_idempotency('checkout:create', 'op-protocol-000001', %L, %L, 201, %L, null, %L)$f$,
    pg_temp.v(p_lease), p_session, jsonb_build_object('sessionId', p_session), pg_temp.at(p_at))
$$;
create function pg_temp.release_sql(p_lease text, p_at int) returns text language sql as $$
  select format($f$select public.release_stripe_idempotency('checkout:create', 'op-protocol-000001', %L, true, 'x', %L)$f$,
    pg_temp.v(p_lease), pg_temp.at(p_at))
$$;

-- created
create temp table c1 as select * from pg_temp.claim('key_a', 'lease_a', 'fp', 0);
select is((select outcome from c1), 'created', 'a first claim creates the operation');
select is((select stripe_idempotency_key from c1), pg_temp.v('key_a'), 'it keeps the caller''s fresh key');
select is((select lease_token::text from c1), pg_temp.v('lease_a'), 'the caller holds the lease');
select is((select lease_expires_at from c1), pg_temp.at(30), 'the lease lasts the requested seconds');
select is((select attempt from c1), 1, 'it is the first attempt');
select row_eq(
  $$select status, expires_at, metadata from public.stripe_idempotency_keys where operation_id = 'op-protocol-000001'$$,
  row('in_progress'::text, pg_temp.at(86400), '{"event_id":"e1"}'::jsonb),
  'the row is in progress, expires 24 hours later, and keeps its metadata');

-- conflict: a live lease is never shared, and its token is not revealed
create temp table c2 as select * from pg_temp.claim('key_b', 'lease_b', 'fp', 10);
select is((select outcome from c2), 'conflict', 'a claim during a live lease is a conflict');
select is((select lease_token from c2), null, 'a conflict does not reveal the lease token');
select is((select stripe_idempotency_key from c2), null, 'a conflict does not hand out the key');
select is((select lease_expires_at from c2), pg_temp.at(30), 'a conflict says when the lease ends (Retry-After)');

-- mismatch: the same operation with another request reveals nothing
create temp table c3 as select * from pg_temp.claim('key_b', 'lease_b', 'other_fp', 10);
select is((select outcome from c3), 'mismatch', 'another fingerprint is a mismatch');
select ok((select num_nulls(stripe_idempotency_key, lease_token, lease_expires_at, response_body, metadata) = 5 from c3),
  'a mismatch reveals nothing of the operation');

-- takeover: expired lease → same key, new owner
create temp table c4 as select * from pg_temp.claim('key_b', 'lease_b', 'fp', 31);
select is((select outcome from c4), 'takeover', 'a claim after the lease expired takes over');
select is((select stripe_idempotency_key from c4), pg_temp.v('key_a'), 'a takeover reuses the SAME Stripe key');
select is((select lease_token::text from c4), pg_temp.v('lease_b'), 'a takeover gets a new lease token');
select is((select attempt from c4), 2, 'a takeover is a new attempt');

-- fencing: the stale holder can neither complete nor release
select throws_ok(pg_temp.record_sql('lease_a', 'cs_stale', 32), 'SI001', null, 'a stale lease holder cannot complete');
select throws_ok(pg_temp.release_sql('lease_a', 32), 'SI001', null, 'a stale lease holder cannot release');
select is((select status from public.stripe_idempotency_keys where operation_id = 'op-protocol-000001'), 'in_progress',
  'a fenced write changes nothing');

-- record: the holder completes (even a little after its lease, as nobody took over)
select is(
  (select r.status from public.record_stripe_idempotency('checkout:create', 'op-protocol-000001',
     pg_temp.v('lease_b')::uuid, 'cs_test_1', 201, '{"sessionId":"cs_test_1","url":"https://x"}',
     '{"order_id":"o1"}', pg_temp.at(70)) r),
  'completed', 'the lease holder completes, even after its lease ran out while nobody took over');
select row_eq(
  $$select stripe_resource_id, response_status, response_body, metadata, lease_expires_at
    from public.stripe_idempotency_keys where operation_id = 'op-protocol-000001'$$,
  row('cs_test_1'::text, 201, '{"sessionId":"cs_test_1","url":"https://x"}'::jsonb,
      '{"event_id":"e1","order_id":"o1"}'::jsonb, null::timestamptz),
  'the record keeps the resource, the exact response and merged metadata');
select is(
  (select r.stripe_resource_id from public.record_stripe_idempotency('checkout:create', 'op-protocol-000001',
     pg_temp.v('lease_b')::uuid, 'cs_test_1', 201, '{"sessionId":"cs_test_1","url":"https://x"}', null, pg_temp.at(71)) r),
  'cs_test_1', 'repeating the same completion (a lost acknowledgement) is harmless');
select throws_ok(pg_temp.record_sql('lease_b', 'cs_other', 72), 'SI002', null,
  'a completed record is never overwritten with another result');
select throws_ok(pg_temp.release_sql('lease_b', 72), 'SI002', null, 'a completed operation cannot be released');

-- replay
create temp table c5 as select * from pg_temp.claim('key_c', 'lease_c', 'fp', 100);
select is((select outcome from c5), 'replay', 'a claim of a completed operation is a replay');
select row_eq('select response_status, response_body, stripe_resource_id, lease_token from c5',
  row(201, '{"sessionId":"cs_test_1","url":"https://x"}'::jsonb, 'cs_test_1'::text, null::uuid),
  'the replay returns the stored response, and no lease');
select is((select outcome from pg_temp.claim('key_c', 'lease_c', 'other_fp', 100)), 'mismatch',
  'a completed operation with another fingerprint is still a mismatch, not a replay');

-- check_stripe_idempotency
select results_eq(
  $$select stripe_idempotency_key, stripe_resource_id, response_status from public.check_stripe_idempotency('checkout:create', 'op-protocol-000001')$$,
  format($$values (%L, 'cs_test_1', 201)$$, pg_temp.v('key_a')),
  'check returns the completed record');
select is_empty(
  $$select * from public.check_stripe_idempotency('checkout:create', 'op-nobody-0000001')$$,
  'check returns nothing for an unknown operation');

-- A second operation, refund:create op-release-00001: a claim (60 s lease) whose key ends in
-- p_uuid, and a release that says whether Stripe answered.
create function pg_temp.claim_refund(p_uuid text, p_lease text, p_at int)
returns public.stripe_idempotency_claim language sql as $$
  select * from public.claim_stripe_idempotency('refund:create', 'op-release-00001',
    'refund:create:op-release-00001:' || p_uuid, repeat('f', 64), pg_temp.v(p_lease)::uuid, 60, '{}',
    pg_temp.at(p_at))
$$;
create function pg_temp.release_refund(p_lease text, p_stripe_answered boolean, p_error text, p_at int)
returns text language sql as $$
  select public.release_stripe_idempotency('refund:create', 'op-release-00001', pg_temp.v(p_lease)::uuid,
    p_stripe_answered, p_error, pg_temp.at(p_at))
$$;

-- release without an answer from Stripe: key kept, lease ended now, next claim takes over
select is((select outcome from pg_temp.claim_refund('11111111-1111-4111-8111-111111111111', 'lease_a', 0)),
  'created', 'a second operation type is independent');
select is_empty(
  $$select * from public.check_stripe_idempotency('refund:create', 'op-release-00001')$$,
  'check returns nothing while the operation is in progress');
select is(pg_temp.release_refund('lease_a', false, 'timeout', 5), 'in_progress',
  'without an answer from Stripe the key stays armed');
select row_eq(
  $$select (pg_temp.claim_refund('22222222-2222-4222-8222-222222222222', 'lease_b', 6)).outcome,
    not exists (select 1 from public.check_stripe_idempotency('refund:create', 'op-release-00001'))$$,
  row('takeover'::text, true),
  'the next claim takes over at once');
select is(
  (select stripe_idempotency_key from public.stripe_idempotency_keys where operation_id = 'op-release-00001'),
  'refund:create:op-release-00001:11111111-1111-4111-8111-111111111111',
  'and reaches Stripe with the SAME key');

-- release after Stripe answered: key burnt, next claim arms its own new key
select is(pg_temp.release_refund('lease_b', true, 'card_declined', 7), 'failed',
  'after an answer from Stripe the attempt is failed');
select row_eq(
  $$select status, lease_token, last_error from public.stripe_idempotency_keys where operation_id = 'op-release-00001'$$,
  row('failed'::text, null::uuid, 'card_declined'::text), 'a failed attempt holds no lease and keeps its error');
select throws_ok(
  format($$select public.record_stripe_idempotency('refund:create', 'op-release-00001', %L, 're_1', 200, '{}', null, %L)$$,
         pg_temp.v('lease_b'), pg_temp.at(8)),
  'SI001', null, 'a failed attempt cannot be completed afterwards');
create temp table c6 as select * from pg_temp.claim_refund('33333333-3333-4333-8333-333333333333', 'lease_c', 9);
select row_eq('select outcome, stripe_idempotency_key, attempt from c6',
  row('retry'::text, 'refund:create:op-release-00001:33333333-3333-4333-8333-333333333333'::text, 3),
  'the next claim retries with its own new key');
select is((select expires_at from public.stripe_idempotency_keys where operation_id = 'op-release-00001'),
  pg_temp.at(9 + 86400), 'a newly armed key extends the row''s life to 24 hours from now');

-- errors, never swallowed
select throws_ok(
  $$select public.record_stripe_idempotency('checkout:create', 'op-missing-000001', gen_random_uuid(), 'cs', 201, '{}')$$,
  'P0002', null, 'recording an unknown operation raises');
select throws_ok(
  $$select public.release_stripe_idempotency('checkout:create', 'op-missing-000001', gen_random_uuid(), true)$$,
  'P0002', null, 'releasing an unknown operation raises');
select throws_ok(
  $$select public.claim_stripe_idempotency('checkout:create', 'op-bad-lease-0001', 'checkout:create:op-bad-lease-0001:44444444-4444-4444-8444-444444444444', repeat('f', 64), gen_random_uuid(), 0)$$,
  '22023', null, 'a zero-second lease is rejected');
select throws_ok(
  $$select public.claim_stripe_idempotency('checkout:create', 'op-bad-key-00001', 'checkout:create:someone-else:44444444-4444-4444-8444-444444444444', repeat('f', 64), gen_random_uuid())$$,
  '23514', null, 'a key that does not belong to the operation is rejected');
select throws_ok(
  $$select public.claim_stripe_idempotency('checkout:create', 'op-bad-fp-000001', 'checkout:create:op-bad-fp-000001:44444444-4444-4444-8444-444444444444', 'not-a-hash', gen_random_uuid())$$,
  '23514', null, 'a fingerprint that is not a sha256 hex digest is rejected');

select * from finish();
rollback;
