-- Capacity counters: kept in the order's transaction by every path, a lapsed hold stops counting
-- without any job, the job only deletes what no longer counts, and check_tier_capacity finds
-- any counter that disagrees with the orders (repair_tier_capacity fixes it).
begin;
select plan(54);

-- Structure and privileges
select has_table('private', 'tier_capacity', 'a counter row per tier');
select has_table('private', 'seat_holds', 'a hold row per tier of each pending order');
select has_index('private', 'seat_holds', 'seat_holds_tier_held_until_idx',
  'a claim reads its tier''s lapsed holds through an index');
select ok((select bool_and(c.relrowsecurity) from pg_class c
           where c.oid in ('private.tier_capacity'::regclass, 'private.seat_holds'::regclass)),
  'RLS is on for the counters');
select function_returns('public', 'check_tier_capacity', array['timestamp with time zone'], 'setof record');
select function_returns('public', 'release_lapsed_seat_holds', array['timestamp with time zone'], 'bigint');
select function_returns('public', 'repair_tier_capacity', array['uuid', 'timestamp with time zone'], 'bigint');
select is((select count(*)::int from cron.job where jobname = 'release-lapsed-seat-holds'
           and command = 'select public.release_lapsed_seat_holds()'), 1,
  'pg_cron deletes lapsed holds by name');

\ir helpers/refused.psql
select * from pg_temp.refused(array['anon', 'authenticated'], array[
  ['select * from public.check_tier_capacity()', 'check capacity'],
  ['select public.release_lapsed_seat_holds()', 'release holds'],
  [$$select public.repair_tier_capacity(gen_random_uuid())$$, 'repair capacity'],
  ['select * from private.tier_capacity', 'read the counters']]);
set local role service_role;
select lives_ok('select * from public.check_tier_capacity()', 'service_role can check capacity');
reset role;

-- Fixtures: one event, tiers 78000000-…-0000000000NN; t0 = 2030-01-01 12:00 UTC; holds 1800 s
-- plus 600 s of grace (seats_held_until = t0 + 2400 for a claim at t0).
insert into events.events (id, title, currency, status) values
  ('e8000000-0000-4000-8000-000000000001', 'Counter Gig', 'usd', 'published');
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
select ('78000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'e8000000-0000-4000-8000-000000000001',
       'Tier ' || n, 1000, case n when 1 then 4 when 2 then 10 when 3 then 3 else null end, 10
from generate_series(1, 4) n;

create function pg_temp.tier(p_n int) returns uuid language sql immutable as $$
  select ('78000000-0000-4000-8000-' || lpad(p_n::text, 12, '0'))::uuid
$$;
create function pg_temp.t(p_at int) returns timestamptz language sql immutable as $$
  select '2030-01-01 12:00:00+00'::timestamptz + make_interval(secs => p_at)
$$;
create function pg_temp.buy(p_op text, p_items jsonb, p_at int) returns public.checkout_claim language sql as $$
  select public.claim_checkout('op-cap-' || p_op, 'checkout:create:op-cap-' || p_op || ':' || gen_random_uuid(),
    repeat('a', 64), gen_random_uuid(), 'e8000000-0000-4000-8000-000000000001', p_items, null,
    'cap@example.com', null, 'http://shop.test/ok', 'http://shop.test/cancel', 1800, 60, pg_temp.t(p_at),
    null, null, null, 1800, 600)
$$;
create function pg_temp.items(p_tier int, p_qty int) returns jsonb language sql immutable as $$
  select jsonb_build_array(jsonb_build_object('tierId', pg_temp.tier(p_tier), 'quantity', p_qty))
$$;
create function pg_temp.counter(p_tier int) returns text language sql as $$
  select c.paid_seats || ' paid, ' || c.held_seats || ' held' from private.tier_capacity c where c.tier_id = pg_temp.tier(p_tier)
$$;
create function pg_temp.disagreeing(p_at int) returns bigint language sql as $$
  select count(*) from public.check_tier_capacity(pg_temp.t(p_at))
  where tier_id in (select pg_temp.tier(n) from generate_series(1, 4) n)
$$;
create function pg_temp.order_of(p_op text) returns uuid language sql as $$
  select o.id from public.orders o where o.checkout_operation_id = 'op-cap-' || p_op order by o.created_at desc limit 1
$$;

select is(pg_temp.counter(1), '0 paid, 0 held', 'a new tier gets a counter row at zero');

-- A claim holds seats: a hold row and the counter, in the claim's own transaction.
select is((pg_temp.buy('a', pg_temp.items(1, 2), 0)).outcome, 'created', 'a claim of 2 seats');
select is(pg_temp.counter(1), '0 paid, 2 held', 'the claim counted its seats as held');
select is((select held_until from private.seat_holds where order_id = pg_temp.order_of('a')),
  pg_temp.t(2400), 'the hold lasts until the order''s seats_held_until');
select is(private.tier_seats_taken(pg_temp.tier(1), pg_temp.t(10)), 2::bigint, 'the counter says 2 taken');
select is(pg_temp.disagreeing(10), 0::bigint, 'the counter agrees with the orders');

-- Multi-tier claim, and sold out writes nothing.
select is((pg_temp.buy('b', pg_temp.items(1, 2) || pg_temp.items(2, 5), 20)).outcome, 'created',
  'a claim of two tiers');
select throws_ok($$select pg_temp.buy('c', pg_temp.items(1, 1), 30)$$, 'CK003', null,
  'the tier is full: sold out');
select is(pg_temp.counter(1), '0 paid, 4 held', 'a refused claim counted nothing');

-- A hold stops counting the instant its seats_held_until passes, with no job run.
select is(private.tier_seats_taken(pg_temp.tier(1), pg_temp.t(2400)), 2::bigint,
  'at a''s seats_held_until its 2 seats stop counting');
select is((pg_temp.buy('d', pg_temp.items(1, 2), 2400)).outcome, 'created',
  'and a new claim gets them, no job having run');
select is(pg_temp.disagreeing(2400), 0::bigint, 'counters agree at that instant');

-- Stripe's word: paid moves seats from held to paid; expired frees them.
select is((public.settle_checkout_session(jsonb_build_object('id', 'cs_test_cap_b', 'status', 'complete',
  'payment_status', 'paid', 'client_reference_id', pg_temp.order_of('b'), 'amount_total', 7000, 'currency', 'usd'),
  pg_temp.t(100))).outcome, 'paid', 'b is paid');
select is(pg_temp.counter(1), '2 paid, 4 held', 'tier 1: b''s seats moved from held to paid');
select is(pg_temp.counter(2), '5 paid, 0 held', 'tier 2 too');
select is((public.settle_checkout_session(jsonb_build_object('id', 'cs_test_cap_d', 'status', 'expired',
  'client_reference_id', pg_temp.order_of('d'), 'amount_total', 2000, 'currency', 'usd'),
  pg_temp.t(2500))).outcome, 'expired', 'd expired at Stripe');
select is(pg_temp.counter(1), '2 paid, 2 held', 'd''s hold is gone');
select is(pg_temp.disagreeing(2500), 0::bigint, 'counters agree after Stripe''s word');

-- A late payment for a's lapsed hold takes its seats back only if they are free.
select is((public.settle_checkout_session(jsonb_build_object('id', 'cs_test_cap_a', 'status', 'complete',
  'payment_status', 'paid', 'client_reference_id', pg_temp.order_of('a'), 'amount_total', 2000, 'currency', 'usd'),
  pg_temp.t(2600))).outcome, 'paid', 'a''s late payment finds its seats free');
select is(pg_temp.counter(1), '4 paid, 0 held', 'and counts them as paid');
select is(private.tier_seats_taken(pg_temp.tier(1), pg_temp.t(2600)), 4::bigint, 'tier 1 is full');

-- The job deletes only holds that already stopped counting, and the count does not move.
select is((pg_temp.buy('e', pg_temp.items(3, 3), 0)).outcome, 'created', 'e holds tier 3');
select is((pg_temp.buy('f', pg_temp.items(4, 1), 3000)).outcome, 'created', 'f holds unlimited tier 4, later');
select is(private.tier_seats_taken(pg_temp.tier(3), pg_temp.t(2400)), 0::bigint, 'e lapsed at 2400');
select ok(public.release_lapsed_seat_holds(pg_temp.t(3000)) >= 1, 'the job deletes lapsed holds');
select is((select count(*)::int from private.seat_holds where order_id = pg_temp.order_of('e')), 0,
  'e''s lapsed hold is gone');
select is(pg_temp.counter(3), '0 paid, 0 held', 'and takes it off the counter');
select is(pg_temp.counter(4), '0 paid, 1 held', 'f''s live hold is untouched');
select is((select status from public.orders where id = pg_temp.order_of('e')), 'pending',
  'the order stays pending: only Stripe says how its session ended');
select is(pg_temp.disagreeing(3000), 0::bigint, 'counters agree after the job');

-- An operator's direct UPDATE keeps the counters exact too.
update public.orders set status = 'cancelled' where id = pg_temp.order_of('f');
select is(pg_temp.counter(4), '0 paid, 0 held', 'a direct cancel releases the hold');
select is(pg_temp.disagreeing(3000), 0::bigint, 'counters agree after a direct update');

-- check_tier_capacity reports a counter that disagrees, and repair_tier_capacity fixes it.
update private.tier_capacity set paid_seats = paid_seats + 1 where tier_id = pg_temp.tier(2);
select results_eq(
  $$select tier_id, paid_counted, paid_recounted, problem from public.check_tier_capacity(pg_temp.t(3000))
    where tier_id in (select pg_temp.tier(n) from generate_series(1, 4) n)$$,
  $$values (pg_temp.tier(2), 6::bigint, 5::bigint, 'paid seats differ'::text)$$,
  'a tampered counter is reported with both figures');
delete from private.seat_holds where tier_id = pg_temp.tier(1);
insert into private.seat_holds values (pg_temp.order_of('b'), pg_temp.tier(1), 2, pg_temp.t(9999));
select is((select problem from public.check_tier_capacity(pg_temp.t(3000)) where tier_id = pg_temp.tier(1)),
  'held_seats differs from its hold rows; hold rows disagree with their orders',
  'a stray hold row is reported');
select is(public.repair_tier_capacity(pg_temp.tier(2), pg_temp.t(3000)), 5::bigint, 'repair recounts tier 2');
select is(public.repair_tier_capacity(pg_temp.tier(1), pg_temp.t(3000)), 4::bigint, 'repair recounts tier 1');
select is(pg_temp.disagreeing(3000), 0::bigint, 'after the repair every counter agrees');

select * from finish();
rollback;
