-- Checkout claim, record and release: orders, prices from the tiers, capacity holds, renewals.
begin;
select plan(67);

insert into events.events (id, title, currency, status) values
  ('e0000000-0000-4000-8000-000000000001', 'Test Gig', 'eur', 'published'),
  ('e0000000-0000-4000-8000-000000000002', 'Draft Gig', 'eur', 'draft');
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order, sales_start_at) values
  ('70000000-0000-4000-8000-000000000001', 'e0000000-0000-4000-8000-000000000001', 'Floor', 1500, 5, 4, null),
  ('70000000-0000-4000-8000-000000000002', 'e0000000-0000-4000-8000-000000000001', 'Balcony', 999, null, 10, null),
  ('70000000-0000-4000-8000-000000000003', 'e0000000-0000-4000-8000-000000000001', 'Later', 100, null, 10, '2031-01-01'),
  ('70000000-0000-4000-8000-000000000009', 'e0000000-0000-4000-8000-000000000002', 'Other', 100, null, 10, null);

-- claim(op, key suffix digit, fingerprint char, items, seconds after t0)
create function pg_temp.claim(p_op text, p_key text, p_fp text, p_items jsonb, p_at int,
                              p_event uuid default 'e0000000-0000-4000-8000-000000000001')
returns public.checkout_claim language sql as $$
  select public.claim_checkout(p_op,
    'checkout:create:' || p_op || ':' || p_key || '0000000-0000-4000-8000-000000000000',
    repeat(p_fp, 64), gen_random_uuid(), p_event, p_items, null, 'buyer@example.com', 'Buyer',
    'http://shop.test/ok', 'http://shop.test/cancel', 1920, 30, '2030-01-01 12:00:00+00'::timestamptz + make_interval(secs => p_at))
$$;
create function pg_temp.items(p_floor int, p_balcony int default 0) returns jsonb language sql as $$
  select jsonb_agg(x) from (
    select jsonb_build_object('tierId', '70000000-0000-4000-8000-000000000001', 'quantity', p_floor) x where p_floor > 0
    union all
    select jsonb_build_object('tierId', '70000000-0000-4000-8000-000000000002', 'quantity', p_balcony) where p_balcony > 0) s
$$;
create function pg_temp.writes() returns bigint language sql as $$
  select (select count(*) from public.orders) + (select count(*) from public.order_items)
       + (select count(*) from public.stripe_idempotency_keys)
$$;
create function pg_temp.floor_taken(p_at int) returns bigint language sql as $$
  select private.tier_seats_taken('70000000-0000-4000-8000-000000000001',
                                 '2030-01-01 12:00:00+00'::timestamptz + make_interval(secs => p_at))
$$;

-- created: prices from the tiers, one order, a hold that ends with the session
create temp table c1 as select * from pg_temp.claim('op-checkout-0000001', 'a', 'a', pg_temp.items(2, 3), 0);
select is((select outcome from c1), 'created', 'a first checkout claim is created');
select is((select amount_total from c1), 2 * 1500 + 3 * 999, 'the amount comes from the tiers');
select is((select currency from c1), 'eur', 'the currency comes from the event');
select is((select hold_expires_at from c1), '2030-01-01 12:32:00+00'::timestamptz, 'the hold lasts the requested seconds');
select is((select lines from c1),
  '[{"tier_id":"70000000-0000-4000-8000-000000000001","product_name":"Test Gig — Floor","unit_amount":1500,"quantity":2},
    {"tier_id":"70000000-0000-4000-8000-000000000002","product_name":"Test Gig — Balcony","unit_amount":999,"quantity":3}]'::jsonb,
  'the Stripe lines are the tiers'' names and prices, in tier order');
select row_eq(
  $$select o.status, o.guest_email, o.user_id, o.amount_total, o.success_url, o.cancel_url
    from public.orders o join c1 on c1.order_id = o.id$$,
  row('pending'::text, 'buyer@example.com'::text, null::uuid, 5997, 'http://shop.test/ok'::text, 'http://shop.test/cancel'::text),
  'a pending guest order exists and keeps its redirect URLs');
select is((select order_id from public.stripe_idempotency_keys where operation_id = 'op-checkout-0000001'),
  (select order_id from c1), 'the operation knows its order');
select is(pg_temp.floor_taken(0), 2::bigint, 'the pending order holds its seats');
select is(pg_temp.floor_taken(1920), 2::bigint, 'and still holds them at expires_at, until Stripe says the session ended');
select is(pg_temp.floor_taken(1920 + 3600), 0::bigint, 'without word from Stripe the hold ends with its grace');

-- conflict and mismatch write nothing new
select is((select outcome from pg_temp.claim('op-checkout-0000001', 'b', 'a', pg_temp.items(2, 3), 5)), 'conflict',
  'a duplicate in flight is a conflict');
select is((select outcome from pg_temp.claim('op-checkout-0000001', 'b', 'b', pg_temp.items(1), 5)), 'mismatch',
  'the same key with another request is a mismatch');
select is((select count(*)::int from public.orders where event_id = 'e0000000-0000-4000-8000-000000000001'), 1,
  'neither created an order');

-- takeover: same key, same order, same lines
create temp table c2 as select * from pg_temp.claim('op-checkout-0000001', 'c', 'a', pg_temp.items(2, 3), 31);
select row_eq('select c2.outcome, c2.stripe_idempotency_key, c2.order_id, c2.lines, c2.hold_expires_at from c2',
  (select row('takeover'::text, stripe_idempotency_key, order_id, lines, hold_expires_at) from c1),
  'a takeover resumes the same key, order, lines and expiry, so Stripe sees identical parameters');

-- record, then replay
select lives_ok(
  format($$select public.record_checkout('op-checkout-0000001', %L, 'cs_test_gig_1', '{"orderId":"x","sessionId":"cs_test_gig_1"}', '2030-01-01 12:00:40+00')$$,
         (select lease_token from c2)),
  'the lease holder records the session');
select is((select stripe_checkout_session_id from public.orders where id = (select order_id from c1)), 'cs_test_gig_1',
  'the order is linked to its session');
create temp table c3 as select * from pg_temp.claim('op-checkout-0000001', 'd', 'a', pg_temp.items(2, 3), 60);
select row_eq('select outcome, response_status, response_body, order_id from c3',
  (select row('replay'::text, 201, '{"orderId":"x","sessionId":"cs_test_gig_1"}'::jsonb, order_id) from c1),
  'a retry replays the stored response');
select row_eq('select c3.* from c3',
  (select row('replay'::text, c2.stripe_idempotency_key, null::uuid, null::timestamptz, c2.attempt, 201,
              '{"orderId":"x","sessionId":"cs_test_gig_1"}'::jsonb, c1.order_id, c1.event_id, null::text,
              null::integer, null::timestamptz, null::jsonb, null::text, null::text, null::text,
              'op-checkout-0000001'::text, null::text, null::integer)::public.checkout_claim from c1, c2),
  'the replay names the key and attempt, the order and its event, and nothing else');
-- A retry storm's answer is one plain read: no nested function, so no lock, write or key made.
set local track_functions = 'pl';
create temp table calls_before as select funcid, calls from pg_stat_xact_user_functions;
create temp table c3s as select * from pg_temp.claim('op-checkout-0000001', 'd', 'a', pg_temp.items(2, 3), 61);
select is(
  (select coalesce(array_agg(f.schemaname || '.' || f.funcname order by f.funcname), '{}')
   from pg_stat_xact_user_functions f left join calls_before b using (funcid)
   -- checkout_operation() is an immutable constant: planning folds it into the statement.
   where f.calls > coalesce(b.calls, 0) and f.funcname not in ('claim_checkout', 'checkout_operation')),
  '{}'::text[], 'a replay of a live session runs no function but claim_checkout itself');
reset track_functions;
-- The replay read finds the operation by its key whatever the statistics say. Analyzed while
-- almost no row had an order (after a bulk load of old operations, say), an index of order ids
-- limited to rows with one looked empty, and the planner walked all of it on every replay.
insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key,
                                            request_fingerprint, status, expires_at)
select 'checkout:create', 'stats-' || g, 'checkout:create:stats-' || g || ':' || gen_random_uuid(),
       repeat('a', 64), 'failed', '2030-01-03 00:00+00'
from generate_series(1, 20000) g;
analyze public.stripe_idempotency_keys;
update public.stripe_idempotency_keys set order_id = (select order_id from c1)
where operation_id like 'stats-%' and operation_id <= 'stats-3';
-- The generic plan, which a pooled session's cached plan becomes after five calls.
set local plan_cache_mode = force_generic_plan;
create temp table order_index_before as
  select pg_stat_get_xact_blocks_fetched('public.stripe_idempotency_keys_order_id_idx'::regclass) as n;
select is((select outcome from pg_temp.claim('op-checkout-0000001', 'd', 'a', pg_temp.items(2, 3), 62)), 'replay',
  'a replay after that');
select is(pg_stat_get_xact_blocks_fetched('public.stripe_idempotency_keys_order_id_idx'::regclass)
          - (select n from order_index_before), 0::bigint,
  'it read nothing of the index of order ids');
reset plan_cache_mode;
select throws_ok(
  format($$select public.record_checkout('op-checkout-0000001', %L, 'cs_test_gig_2', '{}', '2030-01-01 12:00:41+00')$$,
         (select lease_token from c1)),
  'SI002', null, 'the attempt that was taken over cannot overwrite the completed record');

-- verify: past expires_at the database does not decide; the retry is told to ask Stripe
create temp table c3v as select * from pg_temp.claim('op-checkout-0000001', 'e', 'a', pg_temp.items(2, 3), 1920);
select row_eq('select outcome, stripe_session_id, order_id, stripe_idempotency_key from c3v',
  (select row('verify'::text, 'cs_test_gig_1'::text, order_id, null::text) from c1),
  'a replay past the session''s expires_at asks Stripe about that session first');
select is((select status from public.orders where id = (select order_id from c1)), 'pending',
  'without Stripe''s word the order stays pending');
select is(pg_temp.floor_taken(1920), 2::bigint, 'and keeps its seats after expires_at (a late payment finds them)');
select is(pg_temp.floor_taken(1920 + 3600), 0::bigint, 'until the grace for a missed webhook runs out');
select is((select outcome from public.settle_checkout_session(
    jsonb_build_object('id', 'cs_test_gig_1', 'status', 'expired', 'client_reference_id', (select order_id from c1),
                       'amount_total', 5997, 'currency', 'eur'), '2030-01-01 12:32:00+00')),
  'expired', 'Stripe''s word (a retrieved expired session) ends the order');
select is(pg_temp.floor_taken(1920), 0::bigint, 'and frees its seats at once');

-- renew: Stripe said the session expired, so a replay starts a fresh attempt on a new order
create temp table c4 as select * from pg_temp.claim('op-checkout-0000001', 'e', 'a', pg_temp.items(2, 3), 1920);
select is((select outcome from c4), 'renew', 'a replay after the session expired renews');
select is((select stripe_idempotency_key from c4),
  'checkout:create:op-checkout-0000001:e0000000-0000-4000-8000-000000000000', 'with the caller''s new key');
select isnt((select order_id from c4), (select order_id from c1), 'on a new order');
select is((select status from public.orders where id = (select order_id from c1)), 'expired', 'the old order is expired');
select is((select hold_expires_at from c4), '2030-01-01 13:04:00+00'::timestamptz, 'with a new hold');
select is((select seats_held_until from public.orders where id = (select order_id from c4)),
  '2030-01-01 14:04:00+00'::timestamptz, 'whose seats count for the grace after it');
select is((select count(*)::int from public.check_stripe_idempotency('checkout:create', 'op-checkout-0000001')), 0,
  'the operation is in progress again');
select lives_ok(
  format($$select public.record_checkout('op-checkout-0000001', %L, 'cs_test_gig_3', '{"sessionId":"cs_test_gig_3"}', '2030-01-01 12:30:01+00')$$,
         (select lease_token from c4)),
  'the renewed attempt records its new session');

-- paid: a replay of a paid order is refused
update public.orders set status = 'paid', paid_at = now() where id = (select order_id from c4);
select is((select outcome from pg_temp.claim('op-checkout-0000001', 'f', 'a', pg_temp.items(2, 3), 1900)), 'paid',
  'a replay of a paid order says so');
select is(pg_temp.floor_taken(999999), 2::bigint, 'a paid order keeps its seats for good');
delete from public.stripe_idempotency_keys where operation_id = 'op-checkout-0000001';
select throws_ok($$select pg_temp.claim('op-checkout-0000001', '9', 'a', pg_temp.items(2, 3), 1950)$$,
  'CK007', null, 'once cleanup forgot the operation, a retry of its key still finds the paid order');
select is((select count(*)::int from public.stripe_idempotency_keys where operation_id = 'op-checkout-0000001'), 0,
  'and the refused claim left no row behind');

-- validation: every rejection raises and writes nothing
create temp table before as select pg_temp.writes() as n;
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', pg_temp.items(2), 0, 'e0000000-0000-4000-8000-00000000dead')$$,
  'CK001', null, 'an unknown event is rejected');
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', '[{"tierId":"70000000-0000-4000-8000-000000000009","quantity":1}]', 0, 'e0000000-0000-4000-8000-000000000002')$$,
  'CK001', null, 'a draft event is not on sale');
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', '[{"tierId":"70000000-0000-4000-8000-000000000009","quantity":1}]', 0)$$,
  'CK002', null, 'a tier of another event is rejected');
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', pg_temp.items(5), 0)$$,
  'CK004', null, 'more than max_per_order is rejected');
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', '[{"tierId":"70000000-0000-4000-8000-000000000003","quantity":1}]', 0)$$,
  'CK005', null, 'a tier before its sales window is rejected');
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', '[{"tierId":"70000000-0000-4000-8000-000000000002","quantity":1},{"tierId":"70000000-0000-4000-8000-000000000002","quantity":2}]', 0)$$,
  '22023', null, 'a repeated tier is rejected');
select throws_ok($$select pg_temp.claim('op-checkout-0000002', 'a', 'a', '[{"tierId":"70000000-0000-4000-8000-00000000000a","quantity":1},{"tierId":"70000000-0000-4000-8000-00000000000A","quantity":2}]', 0)$$,
  '22023', null, 'a tier repeated in another letter case is still repeated');
-- 2 paid seats + 3 new = 5 = capacity: fine; one more is sold out.
create temp table c5 as select * from pg_temp.claim('op-checkout-0000003', 'a', 'a', pg_temp.items(3), 2000);
select is((select outcome from c5), 'created', 'the last seats can be sold');
update before set n = pg_temp.writes();
select throws_ok($$select pg_temp.claim('op-checkout-0000004', 'a', 'a', pg_temp.items(1, 1), 2000)$$,
  'CK003', null, 'a checkout beyond capacity is sold out');
select is(pg_temp.writes(), (select n from before), 'rejected checkouts wrote nothing');

-- release: without an answer the hold stays; with one the order is cancelled and seats freed
select is(public.release_checkout('op-checkout-0000003', (select lease_token from c5), false, 'timeout', '2030-01-01 12:33:21+00'),
  'in_progress', 'without an answer from Stripe the attempt stays open');
select is(pg_temp.floor_taken(2001), 5::bigint, 'and the order keeps its hold (the session may exist)');
create temp table c6 as select * from pg_temp.claim('op-checkout-0000003', 'b', 'a', pg_temp.items(3), 2002);
select is(public.release_checkout('op-checkout-0000003', (select lease_token from c6), true, 'card_declined', '2030-01-01 12:33:23+00'),
  'failed', 'after an answer the attempt fails');
select is(pg_temp.floor_taken(2003), 2::bigint, 'and the cancelled order frees its seats at once');
create temp table c7 as select * from pg_temp.claim('op-checkout-0000003', 'c', 'a', pg_temp.items(3), 2004);
select row_eq('select outcome, stripe_idempotency_key from c7',
  row('retry'::text, 'checkout:create:op-checkout-0000003:c0000000-0000-4000-8000-000000000000'::text),
  'the next retry arms a new key');
select isnt((select order_id from c7), (select order_id from c5), 'on a new order holding the seats again');

-- a takeover too late for Stripe's 30-minute floor arms a fresh attempt instead of failing
create temp table c8 as select * from pg_temp.claim('op-checkout-0000005', 'a', 'a', pg_temp.items(0, 1), 3000);
create temp table c9 as select * from pg_temp.claim('op-checkout-0000005', 'b', 'a', pg_temp.items(0, 1), 3000 + 180);
select row_eq('select outcome, stripe_idempotency_key from c9',
  row('renew'::text, 'checkout:create:op-checkout-0000005:b0000000-0000-4000-8000-000000000000'::text),
  'a takeover whose expires_at is too close for Stripe gets a new key');
select is((select hold_expires_at from c9), '2030-01-01 13:25:00+00'::timestamptz, 'and a new hold window');
select is((select status from public.orders where id = (select order_id from c8)), 'cancelled',
  'the dead attempt''s order frees its seats');
create temp table c10 as select * from pg_temp.claim('op-checkout-0000006', 'a', 'a', pg_temp.items(0, 1), 4000);
select is((select outcome from pg_temp.claim('op-checkout-0000006', 'b', 'a', pg_temp.items(0, 1), 4000 + 31)),
  'takeover', 'an early takeover keeps the same key and order');

-- hold limits: a guest is (email, address), a user is their id, an address spans buyers
create function pg_temp.hold(p_email text, p_address inet, p_user uuid default null) returns void language sql as $$
  insert into public.orders (event_id, user_id, guest_email, currency, amount_total, client_address,
                             hold_expires_at, seats_held_until, created_at)
  values ('e0000000-0000-4000-8000-000000000001', p_user, p_email, 'eur', 0, p_address,
          '2030-06-01 12:30:00+00', '2030-06-01 13:30:00+00', '2030-06-01 12:00:00+00')
$$;
create function pg_temp.limits(p_email text, p_address inet, p_user uuid default null) returns void language sql as $$
  select private.enforce_pending_hold_limits(p_user, p_email, p_address, 2, 3, 1800, '2030-06-01 12:01:00+00')
$$;
select pg_temp.hold('victim@example.com', '192.0.2.1'), pg_temp.hold('victim@example.com', '192.0.2.1');
select throws_ok($$select pg_temp.limits('victim@example.com', '192.0.2.1')$$,
  'CK006', 'Cannot create checkout: this buyer already has 2 pending checkouts',
  'a guest email at its limit from one address is refused there');
select lives_ok($$select pg_temp.limits('victim@example.com', '198.51.100.7')$$,
  'the same email from another address is not');
select lives_ok($$select pg_temp.limits('victim@example.com', null)$$,
  'nor from an unknown address');
select pg_temp.hold('victim@example.com', null), pg_temp.hold('victim@example.com', null);
select throws_ok($$select pg_temp.limits('victim@example.com', null)$$,
  'CK006', null, 'an unknown address counts the email''s holds with no address');
insert into auth.users (id, email) values ('a0000000-0000-4000-8000-000000000001', 'user@example.com');
select pg_temp.hold(null, '192.0.2.10', 'a0000000-0000-4000-8000-000000000001'),
       pg_temp.hold(null, '192.0.2.11', 'a0000000-0000-4000-8000-000000000001');
select throws_ok($$select pg_temp.limits(null, '192.0.2.12', 'a0000000-0000-4000-8000-000000000001')$$,
  'CK006', null, 'a signed-in buyer is counted per user id, across addresses');
select pg_temp.hold('third@example.com', '192.0.2.1');
select throws_ok($$select pg_temp.limits('fourth@example.com', '192.0.2.1')$$,
  'CK006', 'Cannot create checkout: this address already has 3 pending checkouts',
  'an address is counted across buyers');
select is((select count(*)::int from pg_indexes where indexname = 'orders_pending_guest_idx'
           and indexdef like '%(guest_email, client_address, created_at)%'), 1,
  'the guest limit''s index leads with (email, address)');

select * from finish();
rollback;
