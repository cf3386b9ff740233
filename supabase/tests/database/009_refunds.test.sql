-- Refunds (operation refund:create): the claim reserves the amount against the order under its
-- lock, the record applies Stripe's Refund, the release gives the reservation back only when
-- Stripe answered; the webhook moves refunds forward, adds refunds made outside, records
-- disputes; a payment that found no seats is recorded as capacity_conflict and refunded.
-- Every scenario uses its own tier, order, operation and event ids, so no count depends on
-- other rows.
begin;
select plan(155);

-- ------------------------------------------------------------------------------------------
-- Structure and privileges
-- ------------------------------------------------------------------------------------------
select has_table('public', 'refunds', 'public.refunds exists');
select has_type('public', 'refund_claim', 'public.refund_claim exists');
select ok((select relrowsecurity from pg_class where oid = 'public.refunds'::regclass), 'RLS is on for public.refunds');
select policies_are('public', 'refunds', array['buyers read their own refunds'],
  'the only policy lets buyers read their own refunds');
select columns_are('public', 'orders', array['id', 'event_id', 'user_id', 'guest_email', 'guest_name', 'status',
  'currency', 'amount_total', 'stripe_checkout_session_id', 'checkout_operation_id', 'client_address', 'success_url',
  'cancel_url', 'hold_expires_at', 'seats_held_until', 'session_completed_at', 'paid_at', 'stripe_payment_intent_id',
  'amount_refunded', 'stripe_dispute_id', 'disputed_at', 'created_at', 'updated_at'],
  'orders carry the payment intent, the amount refunded and the dispute');

\ir helpers/functions.psql
select * from pg_temp.functions_are_api('refund', array[
  'public.claim_refund(text, text, text, uuid, uuid, integer, text, text, integer, timestamptz)',
  'public.record_refund(text, uuid, jsonb, timestamptz)',
  'public.release_refund(text, uuid, boolean, text, timestamptz)',
  'public.claim_stuck_refunds(integer, integer, integer, timestamptz, text[])',
  'public.capacity_conflicts_to_refund(integer, integer, uuid[])',
  'private.refund_operation()',
  'private.order_refundable(public.orders)',
  'private.refund_status_rank(text)',
  'private.sync_order_refunds(uuid)',
  'private.apply_refund_status(public.refunds, jsonb)',
  'private.refund_claim_of(public.stripe_idempotency_claim, text, public.refunds, public.orders)',
  'private.apply_stripe_refund(jsonb, timestamptz)',
  'private.record_dispute(jsonb, timestamptz)',
  'private.apply_stripe_event(text, jsonb, jsonb, timestamptz)']);
select function_returns('public', 'claim_refund',
  array['text', 'text', 'text', 'uuid', 'uuid', 'integer', 'text', 'text', 'integer', 'timestamp with time zone'], 'refund_claim');
select function_returns('public', 'record_refund', array['text', 'uuid', 'jsonb', 'timestamp with time zone'], 'jsonb');

\ir helpers/refused.psql
select * from pg_temp.refused(array['anon', 'authenticated'], array[
  [$$select public.claim_refund('rf-refused', 'refund:create:rf-refused:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('b', 64), gen_random_uuid(), gen_random_uuid())$$,
   'claim refunds'],
  [$$select public.record_refund('rf-refused', gen_random_uuid(), '{}')$$, 'record refunds'],
  [$$select public.release_refund('rf-refused', gen_random_uuid(), true)$$, 'release refunds'],
  [$$select * from public.claim_stuck_refunds()$$, 'claim stuck refunds'],
  [$$select * from public.capacity_conflicts_to_refund()$$, 'list capacity conflicts'],
  [$$insert into public.refunds (order_id, source, amount, currency) values (gen_random_uuid(), 'operator', 1, 'usd')$$,
   'write refunds']]);
select * from pg_temp.refused(array['anon'], array[[$$select * from public.refunds$$, 'read refunds']]);

-- A signed-in buyer reads the refunds of their own orders only.
insert into events.events (id, title, currency, status) values
  ('e9000000-0000-4000-8000-000000000001', 'Refund Gig', 'usd', 'published');
insert into auth.users (id, email) values
  ('29000000-0000-4000-8000-000000000001', 'rf-a@example.com'),
  ('29000000-0000-4000-8000-000000000002', 'rf-b@example.com');
insert into public.orders (id, event_id, user_id, status, currency, amount_total, hold_expires_at, seats_held_until, paid_at) values
  ('d9000000-0000-4000-8000-000000000001', 'e9000000-0000-4000-8000-000000000001', '29000000-0000-4000-8000-000000000001',
   'paid', 'usd', 100, now(), now(), now()),
  ('d9000000-0000-4000-8000-000000000002', 'e9000000-0000-4000-8000-000000000001', '29000000-0000-4000-8000-000000000002',
   'paid', 'usd', 200, now(), now(), now());
insert into public.refunds (order_id, source, amount, currency) values
  ('d9000000-0000-4000-8000-000000000001', 'operator', 100, 'usd'),
  ('d9000000-0000-4000-8000-000000000002', 'operator', 200, 'usd');
set local role authenticated;
do $$ begin
  perform set_config('request.jwt.claims', '{"sub":"29000000-0000-4000-8000-000000000001","role":"authenticated"}', true);
end $$;
select results_eq($$select amount from public.refunds where order_id::text like 'd9000000-%'$$, array[100],
  'a buyer reads only the refunds of their own orders');
reset role;

-- ------------------------------------------------------------------------------------------
-- Fixtures: tiers 79000000-…-0000000000NN at 1000 each (tiers 1 and 6 hold 2 seats), t0 =
-- 2030-01-01 12:00 UTC, ids with prefix rf (helpers/orders.psql): a paid order <name> is paid by
-- pi_rf_<name>.
-- ------------------------------------------------------------------------------------------
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
select ('79000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'e9000000-0000-4000-8000-000000000001',
       'Tier ' || n, 1000, case when n in (1, 6) then 2 else 10 end, 10
from generate_series(1, 10) n;

create function pg_temp.prefix() returns text language sql immutable as $$ select 'rf' $$;
create function pg_temp.tier(p_n int) returns uuid language sql immutable as $$
  select ('79000000-0000-4000-8000-' || lpad(p_n::text, 12, '0'))::uuid
$$;
create function pg_temp.t(p_at int) returns timestamptz language sql immutable as $$
  select '2030-01-01 12:00:00+00'::timestamptz + make_interval(secs => p_at)
$$;
\ir helpers/orders.psql
\ir helpers/refunds.psql

-- ------------------------------------------------------------------------------------------
-- A full refund: created, conflict, mismatch, record, replay; the seats are sold again
-- ------------------------------------------------------------------------------------------
do $$ begin perform pg_temp.paid('a', 1, 2, 0); end $$;
select row_eq($$select (o).status, (o).paid_at, (o).stripe_payment_intent_id, (o).amount_refunded from (select pg_temp.ord('a') o) x$$,
  row('paid'::text, pg_temp.t(10), 'pi_rf_a'::text, 0), 'a paid order keeps the PaymentIntent that paid it');
select throws_ok($$select pg_temp.checkout('a-rival', 1, 1, pg_temp.t(20))$$, 'CK003', null, 'its tier is sold out');

create temp table a1 as select * from pg_temp.claim('rf-a1', pg_temp.oid('a'), null, 100);
select row_eq($$select outcome, amount, currency, payment_intent, order_id, operation_id, attempt, lease_expires_at from a1$$,
  row('created'::text, 2000, 'usd'::text, 'pi_rf_a'::text, pg_temp.oid('a'), 'rf-a1'::text, 1, pg_temp.t(160)),
  'a claim without an amount is created for all that is left, with the PaymentIntent to refund');
select row_eq($$select (r).id, (r).status, (r).amount, (r).source, (r).order_id, (r).stripe_refund_id from (select pg_temp.refund_of('rf-a1') r) x$$,
  row((select refund_id from a1), 'reserved'::text, 2000, 'operator'::text, pg_temp.oid('a'), null::text),
  'the claim reserves the refund row');
select is((select order_id from public.stripe_idempotency_keys where operation_type = 'refund:create' and operation_id = 'rf-a1'),
  pg_temp.oid('a'), 'the operation is linked to its order');
select is(pg_temp.left_of(pg_temp.oid('a')), 0, 'nothing is left to refund while the reservation holds it all');
select row_eq($$select outcome, lease_token, lease_expires_at from pg_temp.claim('rf-a1', pg_temp.oid('a'), null, 110)$$,
  row('conflict'::text, null::uuid, pg_temp.t(160)), 'a second claim while the lease is live is a conflict');
select is((pg_temp.claim('rf-a1', pg_temp.oid('a'), null, 110, p_fp => repeat('c', 64))).outcome, 'mismatch',
  'a claim of the same operation with another fingerprint is a mismatch');

create temp table a1_body as
  select pg_temp.record('rf-a1', pg_temp.re('re_rf_a1', 2000, 'a', 'succeeded'), 120) as j;
select is((select j from a1_body),
  jsonb_build_object('refundId', 're_rf_a1', 'orderId', pg_temp.oid('a'), 'amount', 2000, 'status', 'succeeded',
                     'orderStatus', 'refunded'),
  'the record returns the 201 body {refundId, orderId, amount, status, orderStatus}');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('a') o) x$$,
  row('refunded'::text, 2000), 'a full refund makes the order refunded');
select row_eq($$select (r).status, (r).stripe_refund_id from (select pg_temp.refund_of('rf-a1') r) x$$,
  row('succeeded'::text, 're_rf_a1'::text), 'the refund row takes Stripe''s id and status');
select is(pg_temp.taken(1, 130), 0::bigint, 'a full refund gives the order''s seats back');
select is(pg_temp.disagreeing(130), 0::bigint, 'check_tier_capacity reports no tier after the refund');
select is((pg_temp.checkout('a-rival-2', 1, 2, pg_temp.t(140))).outcome, 'created', 'the seats can be sold again');
select is(pg_temp.record('rf-a1', pg_temp.re('re_rf_a1', 2000, 'a', 'succeeded'), 150),
  (select j from a1_body), 'repeating the same record returns the same body');
select row_eq($$select outcome, response_status, response_body from pg_temp.claim('rf-a1', pg_temp.oid('a'), null, 200)$$,
  row('replay'::text, 201, (select j from a1_body)), 'a claim after the record replays the stored body');
select is((select count(*)::int from public.refunds where order_id = pg_temp.oid('a')), 1, 'the replay wrote no refund');
select is(pg_temp.error_of($$select pg_temp.claim('rf-a2', pg_temp.oid('a'), null, 210)$$), 'RF003:0',
  'a new refund of a refunded order: RF003, nothing left');
select is(pg_temp.written('rf-a2'), 0, 'and nothing is written (no idempotency row, no refund row)');

-- ------------------------------------------------------------------------------------------
-- Partial refunds: paid → partially_refunded → refunded; in-flight reservations count
-- ------------------------------------------------------------------------------------------
do $$ begin perform pg_temp.paid('b', 2, 3, 0); end $$;
do $$ begin perform pg_temp.claim('rf-b1', pg_temp.oid('b'), 1000, 100); end $$;
select is(pg_temp.record('rf-b1', pg_temp.re('re_rf_b1', 1000, 'b', 'succeeded'), 110) ->> 'orderStatus',
  'partially_refunded', 'a first partial refund: the body says partially_refunded');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('b') o) x$$,
  row('partially_refunded'::text, 1000), 'the order is partially refunded by 1000');
select is(pg_temp.taken(2, 120), 3::bigint, 'a partially refunded order keeps its seats');
select row_eq($$select outcome, amount from pg_temp.claim('rf-b2', pg_temp.oid('b'), 1500, 130)$$,
  row('created'::text, 1500), 'a second partial refund is reserved');
select is(pg_temp.left_of(pg_temp.oid('b')), 500, 'the in-flight reservation counts against what is left');
select is(pg_temp.error_of($$select pg_temp.claim('rf-b3', pg_temp.oid('b'), 1000, 140)$$), 'RF003:500',
  'a third refund above what is left: RF003, DETAIL what is left');
select is(pg_temp.written('rf-b3'), 0, 'the refused claim wrote nothing');
select is(pg_temp.record('rf-b2', pg_temp.re('re_rf_b2', 1500, 'b', 'succeeded'), 150) ->> 'orderStatus',
  'partially_refunded', 'the second partial refund is recorded');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('b') o) x$$,
  row('partially_refunded'::text, 2500), 'amount_refunded is the sum of the succeeded refunds');
select is(pg_temp.error_of($$select pg_temp.claim('rf-b4', pg_temp.oid('b'), 600, 160)$$), 'RF003:500',
  'a refund of 600 when 500 are left: RF003');
select row_eq($$select outcome, amount from pg_temp.claim('rf-b5', pg_temp.oid('b'), null, 170)$$,
  row('created'::text, 500), 'a refund without an amount takes the 500 left');
do $$ begin perform pg_temp.record('rf-b5', pg_temp.re('re_rf_b5', 500, 'b', 'succeeded'), 180); end $$;
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('b') o) x$$,
  row('refunded'::text, 3000), 'the last refund makes the order refunded');
select is(pg_temp.taken(2, 190), 0::bigint, 'and frees its seats');
select is(pg_temp.disagreeing(190), 0::bigint, 'the counters agree with the orders');

-- ------------------------------------------------------------------------------------------
-- A pending refund, then the webhook: forward only, duplicates
-- ------------------------------------------------------------------------------------------
do $$ begin perform pg_temp.paid('c', 3, 1, 0); end $$;
do $$ begin perform pg_temp.claim('rf-c1', pg_temp.oid('c'), null, 100); end $$;
select is(pg_temp.record('rf-c1', pg_temp.re('re_rf_c1', 1000, 'c', 'pending'), 110),
  jsonb_build_object('refundId', 're_rf_c1', 'orderId', pg_temp.oid('c'), 'amount', 1000, 'status', 'pending',
                     'orderStatus', 'paid'),
  'a pending refund is recorded; the order stays paid');
select row_eq($$select (o).status, (o).amount_refunded, (r).status, (r).stripe_refund_id
               from (select pg_temp.ord('c') o, pg_temp.refund_of('rf-c1') r) x$$,
  row('paid'::text, 0, 'pending'::text, 're_rf_c1'::text), 'nothing is refunded until Stripe says succeeded');
select is(pg_temp.left_of(pg_temp.oid('c')), 0, 'the pending refund still holds its amount');
select is(pg_temp.taken(3, 120), 1::bigint, 'and the order keeps its seat');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_c1', 'refund.updated',
                  pg_temp.re('re_rf_c1', 1000, 'c', 'succeeded'), 300)$$,
  row('refund'::text, pg_temp.oid('c')), 'refund.updated succeeded is applied');
select row_eq($$select (o).status, (o).amount_refunded, (r).status from (select pg_temp.ord('c') o, pg_temp.refund_of('rf-c1') r) x$$,
  row('refunded'::text, 1000, 'succeeded'::text), 'the refund succeeded and the order is refunded');
select is(pg_temp.taken(3, 300), 0::bigint, 'its seat is free');
select is((pg_temp.deliver('evt_rf_c0', 'refund.created', pg_temp.re('re_rf_c1', 1000, 'c', 'pending'), 310)).outcome,
  'noop', 'an older pending delivery afterwards is a noop');
select row_eq($$select (o).status, (r).status from (select pg_temp.ord('c') o, pg_temp.refund_of('rf-c1') r) x$$,
  row('refunded'::text, 'succeeded'::text), 'it moves nothing back');
select is((pg_temp.deliver('evt_rf_c1', 'refund.updated', pg_temp.re('re_rf_c1', 1000, 'c', 'succeeded'), 320)).outcome,
  'duplicate', 'the same event id again is a duplicate');

-- ------------------------------------------------------------------------------------------
-- refund.failed gives the reservation back
-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.paid('d', 4, 2, 0);
  perform pg_temp.claim('rf-d1', pg_temp.oid('d'), 500, 100);
  perform pg_temp.record('rf-d1', pg_temp.re('re_rf_d1', 500, 'd', 'succeeded'), 110);
  perform pg_temp.claim('rf-d2', pg_temp.oid('d'), 1000, 120);
  perform pg_temp.record('rf-d2', pg_temp.re('re_rf_d2', 1000, 'd', 'pending'), 130);
end $$;
select is(pg_temp.left_of(pg_temp.oid('d')), 500, 'a succeeded and a pending refund leave 500');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_d2', 'refund.failed',
                  pg_temp.re('re_rf_d2', 1000, 'd', 'failed') || '{"failure_reason":"lost_or_stolen_card"}', 400)$$,
  row('refund'::text, pg_temp.oid('d')), 'refund.failed is applied');
select row_eq($$select (r).status, (r).last_error from (select pg_temp.refund_of('rf-d2') r) x$$,
  row('failed'::text, 'lost_or_stolen_card'::text), 'the refund is failed, with Stripe''s reason');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('d') o) x$$,
  row('partially_refunded'::text, 500), 'the order follows its succeeded refunds only');
select is(pg_temp.left_of(pg_temp.oid('d')), 1500, 'the failed refund''s reservation is given back');
select row_eq($$select outcome, amount from pg_temp.claim('rf-d3', pg_temp.oid('d'), null, 410)$$,
  row('created'::text, 1500), 'so a new refund may take it');

-- ------------------------------------------------------------------------------------------
-- Takeover, fencing, release (key kept or burnt), retry
-- ------------------------------------------------------------------------------------------
do $$ begin perform pg_temp.paid('e', 5, 1, 0); end $$;
create temp table e1 as select * from pg_temp.claim('rf-e1', pg_temp.oid('e'), 400, 100);
select is((pg_temp.claim('rf-e1', pg_temp.oid('e'), 400, 130)).outcome, 'conflict', 'conflict while the lease is live');
create temp table e2 as select * from pg_temp.claim('rf-e1', pg_temp.oid('e'), 400, 161);
select row_eq($$select outcome, stripe_idempotency_key, refund_id, amount, attempt from e2$$,
  (select row('takeover'::text, stripe_idempotency_key, refund_id, 400, 2) from e1),
  'after the lease expired: takeover with the same key, the same amount and the same refund row');
select ok((select e2.lease_token <> e1.lease_token from e1, e2), 'with a new lease');
select is((select count(*)::int from public.refunds where operation_id = 'rf-e1'), 1, 'no second refund row');
select throws_ok($$select public.record_refund('rf-e1', (select lease_token from e1),
                    pg_temp.re('re_rf_e1', 400, 'e', 'succeeded'), pg_temp.t(170))$$,
  'SI001', null, 'the fenced first attempt cannot record');
select is(pg_temp.release('rf-e1', false, 171, 'timeout'), 'in_progress', 'a release without Stripe''s answer keeps the key');
select row_eq($$select (r).status, (r).amount from (select pg_temp.refund_of('rf-e1') r) x$$,
  row('reserved'::text, 400), 'and the reservation');
select is(pg_temp.left_of(pg_temp.oid('e')), 600, 'which still counts against what is left');
select row_eq($$select outcome, stripe_idempotency_key from pg_temp.claim('rf-e1', pg_temp.oid('e'), 400, 172)$$,
  (select row('takeover'::text, stripe_idempotency_key) from e1), 'the next claim takes over with the same key');
select is(pg_temp.release('rf-e1', true, 173, 'StripeInvalidRequestError: charge_disputed'), 'failed',
  'a release after Stripe answered burns the key');
select row_eq($$select (r).status, (r).last_error from (select pg_temp.refund_of('rf-e1') r) x$$,
  row('failed'::text, 'StripeInvalidRequestError: charge_disputed'::text), 'the refund row is failed, with the reason');
select is(pg_temp.left_of(pg_temp.oid('e')), 1000, 'and the reservation is given back');
create temp table e4 as select * from pg_temp.claim('rf-e1', pg_temp.oid('e'), 400, 174);
select row_eq($$select outcome, refund_id, amount, attempt from e4$$,
  (select row('retry'::text, refund_id, 400, 4) from e1), 'the next claim retries the same refund row');
select ok((select e4.stripe_idempotency_key <> e1.stripe_idempotency_key
                  and e4.stripe_idempotency_key like 'refund:create:rf-e1:%' from e1, e4),
  'with a new key');
select row_eq($$select (r).status, (r).amount, (r).stripe_refund_id, (r).last_error from (select pg_temp.refund_of('rf-e1') r) x$$,
  row('reserved'::text, 400, null::text, null::text), 'reserved again');
select is(pg_temp.left_of(pg_temp.oid('e')), 600, 'and counted again');
select throws_ok($$select pg_temp.record('rf-e1', pg_temp.re('re_rf_e1', 300, 'e', 'succeeded'), 175)$$,
  '22023', null, 'a Stripe refund of another amount than the reservation is refused');
select throws_ok($$select pg_temp.record('rf-e1', pg_temp.re('re_rf_e1', 400, 'e') || '{"payment_intent":"pi_rf_other"}', 175)$$,
  '22023', null, 'a Stripe refund of another PaymentIntent is refused');
select is(pg_temp.record('rf-e1', pg_temp.re('re_rf_e1', 400, 'e', 'succeeded'), 176) ->> 'orderStatus',
  'partially_refunded', 'the retry records the refund');

-- ------------------------------------------------------------------------------------------
-- Refused claims: RF001, RF002, bad arguments; nothing written
-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.checkout('f-pending', 7, 1, pg_temp.t(0), 'cs_test_rf_f_pending');
  perform pg_temp.checkout('f-expired', 7, 1, pg_temp.t(0), 'cs_test_rf_f_expired');
  perform pg_temp.checkout('f-cancelled', 7, 1, pg_temp.t(0), 'cs_test_rf_f_cancelled');
  perform pg_temp.deliver('evt_rf_f_expired', 'checkout.session.expired', pg_temp.session('f-expired', 'unpaid'), 100);
  perform pg_temp.deliver('evt_rf_f_cancelled', 'checkout.session.async_payment_failed', pg_temp.session('f-cancelled', 'unpaid'), 100);
end $$;
select is(pg_temp.error_of($$select pg_temp.claim('rf-f1', 'e9000000-0000-4000-8000-00000000dead', null, 200)$$),
  'RF001:e9000000-0000-4000-8000-00000000dead', 'an unknown order: RF001');
select is(pg_temp.error_of($$select pg_temp.claim('rf-f2', pg_temp.oid('f-pending'), null, 200)$$), 'RF002:pending',
  'a pending order: RF002');
select is(pg_temp.error_of($$select pg_temp.claim('rf-f3', pg_temp.oid('f-expired'), null, 200)$$), 'RF002:expired',
  'an expired order: RF002');
select is(pg_temp.error_of($$select pg_temp.claim('rf-f4', pg_temp.oid('f-cancelled'), null, 200)$$), 'RF002:cancelled',
  'a cancelled order: RF002');
select is(pg_temp.written('rf-f1') + pg_temp.written('rf-f2') + pg_temp.written('rf-f3') + pg_temp.written('rf-f4'), 0,
  'no refused claim wrote an idempotency row or a refund row');
select throws_ok($$select pg_temp.claim('rf-f5', pg_temp.oid('a'), 0, 200)$$, '22023', null, 'a zero amount is a bad argument');
select throws_ok($$select pg_temp.claim('rf-f6', pg_temp.oid('a'), null, 200, 'stripe')$$, '22023', null,
  'source stripe is the webhook''s, not a claim''s');

-- ------------------------------------------------------------------------------------------
-- The webhook: a refund not recorded yet (RF004, retried), a refund made outside
-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.paid('g', 8, 2, 0);
  perform pg_temp.claim('rf-g1', pg_temp.oid('g'), 500, 100);
end $$;
select row_eq($$select outcome, detail from pg_temp.deliver('evt_rf_g_dash', 'refund.created',
                  pg_temp.re('re_dash_g', 300, 'g') || '{"metadata":{}}', 110)$$,
  row('failed'::text, 'RF004'::text), 'an unknown refund of an order with a refund in flight: failed (RF004)');
select row_eq($$select (e).processed_at, (e).attempts, (e).last_error like 'RF004: %' from (select pg_temp.evt('evt_rf_g_dash') e) x$$,
  row(null::timestamptz, 1, true), 'the event stays unprocessed, for Stripe to deliver again');
select is((select count(*)::int from public.refunds where stripe_refund_id = 're_dash_g'), 0, 'nothing was added');
select row_eq($$select outcome, detail from pg_temp.deliver('evt_rf_g1_early', 'refund.created',
                  pg_temp.re('re_rf_g1', 500, 'g', 'pending'), 111)$$,
  row('failed'::text, 'RF004'::text), 'the in-flight refund''s own event, before its record: failed (RF004) too');
do $$ begin perform pg_temp.record('rf-g1', pg_temp.re('re_rf_g1', 500, 'g', 'succeeded'), 120); end $$;
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_g_dash', 'refund.created',
                  pg_temp.re('re_dash_g', 300, 'g') || '{"metadata":{}}', 600)$$,
  row('refund'::text, pg_temp.oid('g')), 'after the record, the redelivery adds the refund made outside');
select row_eq($$select source, amount, status, operation_id, order_id from public.refunds where stripe_refund_id = 're_dash_g'$$,
  row('stripe'::text, 300, 'succeeded'::text, null::text, pg_temp.oid('g')), 'as a refund of source stripe');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('g') o) x$$,
  row('partially_refunded'::text, 800), 'the order counts both refunds');
select row_eq($$select (e).processed_at, (e).attempts, (e).last_error from (select pg_temp.evt('evt_rf_g_dash') e) x$$,
  row(pg_temp.t(600), 2, null::text), 'the event is processed on its second delivery, its error cleared');
select is((pg_temp.deliver('evt_rf_g1_early', 'refund.created', pg_temp.re('re_rf_g1', 500, 'g', 'pending'), 610)).outcome,
  'noop', 'the early event, delivered again, finds its refund already succeeded');
select is(pg_temp.left_of(pg_temp.oid('g')), 1200, 'what is left accounts for the refund made outside');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_unknown_pi', 'refund.created',
                  pg_temp.re('re_dash_nobody', 300, 'g') || '{"payment_intent":"pi_rf_nobody","metadata":{}}', 620)$$,
  row('unmatched'::text, null::uuid), 'a refund of a PaymentIntent no order was paid by is unmatched');

-- charge.refunded: the charge's refunds from p_related, oldest first.
do $$ begin
  perform pg_temp.paid('h', 9, 3, 0);
  perform pg_temp.claim('rf-h1', pg_temp.oid('h'), 1000, 100);
  perform pg_temp.record('rf-h1', pg_temp.re('re_rf_h1', 1000, 'h', 'pending', 10), 110);
end $$;
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_h_charge', 'charge.refunded',
                  '{"id":"ch_rf_h","object":"charge","payment_intent":"pi_rf_h","amount_refunded":2000}',
                  700, jsonb_build_object('refunds', jsonb_build_array(
                    pg_temp.re('re_dash_h2', 1000, 'h', 'succeeded', 20) || '{"metadata":{}}',
                    pg_temp.re('re_rf_h1', 1000, 'h', 'succeeded', 10))))$$,
  row('refund'::text, pg_temp.oid('h')), 'charge.refunded applies the refunds listed in p_related');
select results_eq($$select stripe_refund_id, source, status from public.refunds where order_id = pg_temp.oid('h') order by stripe_refund_id$$,
  $$values ('re_dash_h2'::text, 'stripe'::text, 'succeeded'::text), ('re_rf_h1', 'operator', 'succeeded')$$,
  'the known refund moved forward and the one made outside was added');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('h') o) x$$,
  row('partially_refunded'::text, 2000), 'the order counts both');
select is((pg_temp.deliver('evt_rf_h_charge_empty', 'charge.refunded', '{"id":"ch_rf_h","object":"charge","payment_intent":"pi_rf_h"}', 710)).outcome,
  'noop', 'a charge.refunded listing no refund is a noop');

-- charge.dispute.created: recorded on the order it disputes, first word kept.
select row_eq($$select outcome, order_id, detail from pg_temp.deliver('evt_rf_dp1', 'charge.dispute.created',
                  '{"id":"dp_rf_1","object":"dispute","payment_intent":"pi_rf_h","reason":"fraudulent","amount":3000}', 800)$$,
  row('disputed'::text, pg_temp.oid('h'), 'fraudulent'::text), 'a dispute is recorded on its order');
select row_eq($$select (o).stripe_dispute_id, (o).disputed_at, (o).status from (select pg_temp.ord('h') o) x$$,
  row('dp_rf_1'::text, pg_temp.t(800), 'partially_refunded'::text), 'with its id and time; the order''s state is unchanged');
select is((pg_temp.deliver('evt_rf_dp2', 'charge.dispute.created',
             '{"id":"dp_rf_2","object":"dispute","payment_intent":"pi_rf_h","reason":"general","amount":3000}', 900)).outcome,
  'disputed', 'a second dispute is recorded too');
select row_eq($$select (o).stripe_dispute_id, (o).disputed_at from (select pg_temp.ord('h') o) x$$,
  row('dp_rf_1'::text, pg_temp.t(800)), 'but the first one is kept');
select is((pg_temp.deliver('evt_rf_dp3', 'charge.dispute.created',
             '{"id":"dp_rf_3","object":"dispute","payment_intent":"pi_rf_nobody","reason":"general"}', 900)).outcome,
  'unmatched', 'a dispute of an unknown PaymentIntent is unmatched');

-- ------------------------------------------------------------------------------------------
-- A payment that found no seats: capacity_conflict, refunded by reconciliation
-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.checkout('j', 6, 2, pg_temp.t(0), 'cs_test_rf_j');
  perform pg_temp.deliver('evt_rf_j_expired', 'checkout.session.expired', pg_temp.session('j', 'unpaid'), 100);
  perform pg_temp.checkout('j-other', 6, 2, pg_temp.t(150), 'cs_test_rf_j_other');
end $$;
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_j_paid', 'checkout.session.completed', pg_temp.session('j'), 200)$$,
  row('capacity_conflict'::text, pg_temp.oid('j')), 'a payment after the hold ended, with the seats gone: capacity_conflict');
select row_eq($$select (o).status, (o).paid_at, (o).stripe_payment_intent_id from (select pg_temp.ord('j') o) x$$,
  row('capacity_conflict'::text, pg_temp.t(200), 'pi_rf_j'::text), 'the order records the payment and its PaymentIntent');
select is(pg_temp.taken(6, 200), 2::bigint, 'the tier is not oversold');
select results_eq('select * from pg_temp.conflicts()', array['conflict.' || pg_temp.oid('j')],
  'capacity_conflicts_to_refund lists it, with operation conflict.<order id>');
select row_eq($$select outcome, amount, payment_intent from pg_temp.claim('conflict.' || pg_temp.oid('j'), pg_temp.oid('j'), null, 300, 'capacity_conflict')$$,
  row('created'::text, 2000, 'pi_rf_j'::text), 'its refund is claimed in full');
select is((select count(*)::int from pg_temp.conflicts()), 0, 'while the refund is in flight it is not listed');
select is(pg_temp.release('conflict.' || pg_temp.oid('j'), true, 301, 'StripeAPIError'), 'failed', 'Stripe refuses it once');
select results_eq('select * from pg_temp.conflicts()', array['conflict.' || pg_temp.oid('j')], 'it is listed again');
select is((pg_temp.claim('conflict.' || pg_temp.oid('j'), pg_temp.oid('j'), null, 302, 'capacity_conflict')).outcome,
  'retry', 'the next run retries it');
select is(pg_temp.record('conflict.' || pg_temp.oid('j'), pg_temp.re('re_rf_j', 2000, 'j', 'succeeded'), 310) ->> 'orderStatus',
  'refunded', 'the recorded refund makes the order refunded');
select row_eq($$select (o).status, (o).amount_refunded, (r).source from (select pg_temp.ord('j') o, pg_temp.refund_of('conflict.' || pg_temp.oid('j')) r) x$$,
  row('refunded'::text, 2000, 'capacity_conflict'::text), 'refunded in full, by a refund of source capacity_conflict');
select is((select count(*)::int from pg_temp.conflicts()), 0, 'and it is no longer listed');
select is(pg_temp.taken(6, 310), 2::bigint, 'the other buyer keeps the seats');
select is(pg_temp.disagreeing(310), 0::bigint, 'the counters agree with the orders');

-- ------------------------------------------------------------------------------------------
-- claim_stuck_refunds: an attempt that died between Stripe and its record
-- ------------------------------------------------------------------------------------------
-- What cleanup forgets: a made refund is never made again; an attempt in flight is kept
-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.paid('cl', 7, 2, 0);
  perform pg_temp.claim('rf-cl1', pg_temp.oid('cl'), 700, 100);
  perform pg_temp.record('rf-cl1', pg_temp.re('re_rf_cl1', 700, 'cl', 'succeeded'), 110);
  -- 24 hours later cleanup deletes the completed operation (its refund row stays).
  delete from public.stripe_idempotency_keys where operation_type = 'refund:create' and operation_id = 'rf-cl1';
end $$;
create temp table cl_again as select * from pg_temp.claim('rf-cl1', pg_temp.oid('cl'), 700, 90000);
select row_eq($$select outcome, response_status, response_body ->> 'refundId', (response_body ->> 'amount')::int, lease_token from cl_again$$,
  row('replay'::text, 201, 're_rf_cl1'::text, 700, null::uuid),
  'the same operation after cleanup answers with the refund it made, as a replay (no lease: Stripe is not called)');
select row_eq($$select count(*)::int, sum(amount)::int from public.refunds where order_id = pg_temp.oid('cl')$$,
  row(1, 700), 'and reserves nothing more');
select is((select status from public.stripe_idempotency_keys where operation_type = 'refund:create' and operation_id = 'rf-cl1'),
  'completed', 'the operation is remembered again, completed');

do $$ begin perform pg_temp.claim('rf-cl2', pg_temp.oid('cl'), 300, 90100); end $$;
select cmp_ok(public.cleanup_expired_idempotency_keys(10000, pg_temp.t(90100) + interval '3 days'), '>', 0::bigint,
  'cleanup runs three days later (and deletes what expired)');
select is((select status from public.stripe_idempotency_keys where operation_type = 'refund:create' and operation_id = 'rf-cl2'),
  'in_progress', 'cleanup keeps a refund attempt in flight, however old: only reconciliation may end it');
delete from public.stripe_idempotency_keys where operation_type = 'refund:create' and operation_id = 'rf-cl2';
select is(pg_temp.error_of($$select pg_temp.claim('rf-cl2', pg_temp.oid('cl'), 300, 90200)$$), 'RF005:',
  'if its record is deleted by hand, a new claim is refused (RF005): Stripe may have made the refund');
select is((select status from public.refunds where operation_id = 'rf-cl2'), 'reserved', 'the reservation stays');

-- ------------------------------------------------------------------------------------------
-- A refund that fails after it succeeded (the bank returned it)
-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.paid('bk', 8, 2, 0);
  perform pg_temp.claim('rf-bk1', pg_temp.oid('bk'), null, 100);
  perform pg_temp.record('rf-bk1', pg_temp.re('re_rf_bk1', 2000, 'bk', 'succeeded'), 110);
end $$;
select is((pg_temp.ord('bk')).status, 'refunded', 'fully refunded first');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_rf_bk1', 'refund.failed',
                  pg_temp.re('re_rf_bk1', 2000, 'bk', 'failed'), 200)$$,
  row('refund'::text, pg_temp.oid('bk')), 'refund.failed after succeeded is applied: Stripe gave the money back to us');
select row_eq($$select (o).status, (o).amount_refunded from (select pg_temp.ord('bk') o) x$$,
  row('capacity_conflict'::text, 0),
  'the order holds the money again without its seats: capacity_conflict, for reconciliation to refund again');
select is(pg_temp.disagreeing(210), 0::bigint, 'no seat came back (the counters agree)');
select is((pg_temp.deliver('evt_rf_bk2', 'refund.updated', pg_temp.re('re_rf_bk1', 2000, 'bk', 'succeeded'), 220)).outcome,
  'noop', 'a late succeeded never undoes the failure');

-- ------------------------------------------------------------------------------------------
do $$ begin
  perform pg_temp.paid('k', 10, 1, 0);
  perform pg_temp.claim('rf-k1', pg_temp.oid('k'), null, 100);
end $$;
create temp table k_stuck as
  select * from public.claim_stuck_refunds(600, 1000, 120, pg_temp.t(1000)) where operation_id = 'rf-k1';
select row_eq($$select outcome, stripe_idempotency_key, refund_id, amount, payment_intent, reconcile_attempts, lease_expires_at from k_stuck$$,
  (select row('reconcile'::text, (c).stripe_idempotency_key, (c).refund_id, 1000, 'pi_rf_k'::text, 1, pg_temp.t(1120))
   from pg_temp.rclaims where op = 'rf-k1'),
  'a stale refund attempt is taken over for reconciliation with the same key and reservation');
select is((select count(*)::int from public.claim_stuck_refunds(600, 1000, 120, pg_temp.t(1000)) where operation_id = 'rf-k1'), 0,
  'not twice while the reconciler''s lease is live');
select is(public.record_refund('rf-k1', (select lease_token from k_stuck),
            pg_temp.re('re_rf_k1', 1000, 'k', 'succeeded'), pg_temp.t(1010)) ->> 'orderStatus',
  'refunded', 'the reconciler records it');
select is(pg_temp.disagreeing(1010), 0::bigint, 'every counter agrees at the end');

-- Record and release of an attempt one does not hold.
select throws_ok($$select public.record_refund('rf-nothing', gen_random_uuid(), pg_temp.re('re_rf_x', 1, 'a'))$$,
  'P0002', null, 'recording an operation that does not exist: P0002');
select throws_ok($$select public.release_refund('rf-k1', (select (c).lease_token from pg_temp.rclaims where op = 'rf-k1'), true)$$,
  'SI002', null, 'releasing a recorded refund: SI002');
do $$ begin perform pg_temp.claim('rf-k2', pg_temp.oid('e'), 100, 1100); end $$;
select throws_ok($$select public.release_refund('rf-k2', gen_random_uuid(), true)$$, 'SI001', null,
  'releasing with another lease: SI001');
select row_eq($$select (r).status, (r).amount from (select pg_temp.refund_of('rf-k2') r) x$$, row('reserved'::text, 100),
  'and the reservation stays');

-- service_role (what the endpoints run as, not a superuser) may run the whole protocol.
do $$ begin perform pg_temp.paid('sr', 10, 2, 2000); end $$;
do $$ begin perform set_config('rf.sr_order', pg_temp.oid('sr')::text, true); end $$;
set local role service_role;
select lives_ok($sql$do $do$
declare
  v_order uuid := current_setting('rf.sr_order')::uuid;
  v_claim public.refund_claim;
  v_result public.webhook_result;
begin
  v_claim := public.claim_refund('rf-sr-1', 'refund:create:rf-sr-1:' || gen_random_uuid(), repeat('b', 64),
    gen_random_uuid(), v_order, 500);
  perform public.record_refund('rf-sr-1', v_claim.lease_token, jsonb_build_object('id', 're_rf_sr1', 'amount', 500,
    'payment_intent', 'pi_rf_sr', 'status', 'pending'));
  v_result := public.process_stripe_webhook_event('evt_rf_sr_1', 'refund.updated', false,
    jsonb_build_object('data', jsonb_build_object('object', jsonb_build_object('id', 're_rf_sr1', 'amount', 500,
      'payment_intent', 'pi_rf_sr', 'status', 'succeeded'))));
  if v_result.outcome <> 'refund' then raise exception 'refund.updated: %', v_result; end if;
  v_claim := public.claim_refund('rf-sr-2', 'refund:create:rf-sr-2:' || gen_random_uuid(), repeat('b', 64),
    gen_random_uuid(), v_order, 500);
  perform public.release_refund('rf-sr-2', v_claim.lease_token, true, 'declined');
  perform public.capacity_conflicts_to_refund();
  perform public.claim_stuck_refunds();
  if (select status from public.orders where id = v_order) <> 'partially_refunded' then
    raise exception 'the order is not partially refunded';
  end if;
end
$do$$sql$, 'service_role claims, records and releases refunds and applies refund events');
reset role;

select * from finish();
rollback;
