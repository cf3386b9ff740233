-- Capacity counters: kept in the order's transaction by every path, a lapsed hold stops counting
-- without any job, the job only deletes what no longer counts, and check_tier_capacity finds
-- any counter that disagrees with the orders (repair_tier_capacity fixes it).
begin;
select plan(121);

-- Structure and privileges
select has_table('private', 'tier_capacity', 'a counter row per tier');
select has_table('private', 'seat_holds', 'a hold row per tier of each pending order');
select has_index('private', 'seat_holds', 'seat_holds_tier_shard_held_until_idx',
  'a claim reads its shard''s lapsed holds through an index');
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
  select sum(c.paid_seats) || ' paid, ' || sum(c.held_seats) || ' held' from private.tier_capacity c where c.tier_id = pg_temp.tier(p_tier)
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
insert into private.seat_holds values (pg_temp.order_of('b'), pg_temp.tier(1), 2, pg_temp.t(9999), 0);
select is((select problem from public.check_tier_capacity(pg_temp.t(3000)) where tier_id = pg_temp.tier(1)),
  'held_seats differs from its hold rows; hold rows disagree with their orders',
  'a stray hold row is reported');
select is(public.repair_tier_capacity(pg_temp.tier(2), pg_temp.t(3000)), 5::bigint, 'repair recounts tier 2');
select is(public.repair_tier_capacity(pg_temp.tier(1), pg_temp.t(3000)), 4::bigint, 'repair recounts tier 1');
select is(pg_temp.disagreeing(3000), 0::bigint, 'after the repair every counter agrees');

-- ------------------------------------------------------------------------------------------
-- Shards: tiers of 256 seats or more (and unlimited ones) count on 8 rows, each with its share
-- ------------------------------------------------------------------------------------------
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
values (pg_temp.tier(5), 'e8000000-0000-4000-8000-000000000001', 'Tier 5', 1000, 300, 10),
       (pg_temp.tier(6), 'e8000000-0000-4000-8000-000000000001', 'Tier 6', 1000, 256, 10);
create function pg_temp.allotments(p_tier int) returns text language sql as $$
  select string_agg(c.allotted::text, ',' order by c.shard) from private.tier_capacity c where c.tier_id = pg_temp.tier(p_tier)
$$;
create function pg_temp.shard_of(p_op text, p_tier int) returns int language sql as $$
  select private.order_capacity_shard(pg_temp.order_of(p_op), 8)
$$;
-- Shards whose seats at p_at exceed their allotment.
create function pg_temp.over(p_tier int, p_at int) returns bigint language sql as $$
  select count(*) from private.tier_capacity c
  where c.tier_id = pg_temp.tier(p_tier) and private.tier_shard_taken(c.tier_id, c.shard, pg_temp.t(p_at)) > c.allotted
$$;
create function pg_temp.problems(p_tier int, p_at int) returns text language sql as $$
  select coalesce(string_agg(problem, ' | '), '') from public.check_tier_capacity(pg_temp.t(p_at)) where tier_id = pg_temp.tier(p_tier)
$$;

select results_eq($$select count(*)::int, min(shards)::int, max(shards)::int from private.tier_capacity where tier_id = pg_temp.tier(5)$$,
  $$values (8, 8, 8)$$, 'a 300-seat tier counts on 8 shards');
select is(pg_temp.allotments(5), '38,38,38,38,37,37,37,37', 'its capacity divided evenly among them');
select is((select count(*)::int from private.tier_capacity where tier_id = pg_temp.tier(3)), 1,
  'a 3-seat tier keeps one row (as before)');
select is(pg_temp.allotments(3), '3', 'whose allotment is the capacity');
select results_eq($$select count(*)::int, count(allotted)::int from private.tier_capacity where tier_id = pg_temp.tier(4)$$,
  $$values (64, 0)$$, 'an unlimited tier has 64 shards and no allotments');
select results_eq(
  $$select private.tier_capacity_shards(c) from unnest(array[1, 255, 256, 8191, 8192, 1000000]) c$$,
  $$values (1), (1), (8), (8), (64), (64)$$,
  'shards by capacity: one row below 256 seats, 8 from 256, 64 from 8,192');

-- Fast path: a claim counts on its order's shard only.
select is((pg_temp.buy('s1', pg_temp.items(5, 3), 0)).outcome, 'created', 'a claim of 3 seats of the 300-seat tier');
select is((select string_agg(c.shard::text, ',') from private.tier_capacity c where c.tier_id = pg_temp.tier(5) and c.held_seats > 0),
  pg_temp.shard_of('s1', 5)::text, 'its seats count on its order''s shard alone');
select is((select shard::int from private.seat_holds where order_id = pg_temp.order_of('s1')), pg_temp.shard_of('s1', 5),
  'and its hold row carries that shard');
select is(pg_temp.allotments(5), '38,38,38,38,37,37,37,37', 'a claim with room on its shard moves no allotment');
select is(pg_temp.problems(5, 10), '', 'check_tier_capacity agrees with the shards');

-- Slow path: with its shard full, a claim moves allotment from the others.
-- Fixture: s1's shard allotted exactly its 3 seats, the next shard given the balance.
update private.tier_capacity c set allotted = 3 where c.tier_id = pg_temp.tier(5) and c.shard = pg_temp.shard_of('s1', 5);
update private.tier_capacity c set allotted = 300 - (select sum(allotted) from private.tier_capacity x
  where x.tier_id = c.tier_id and x.shard <> c.shard)
where c.tier_id = pg_temp.tier(5) and c.shard = (pg_temp.shard_of('s1', 5) + 1) % 8;
select is((select sum(allotted)::int from private.tier_capacity where tier_id = pg_temp.tier(5)), 300,
  'fixture: s1''s shard exactly full, the allotments still adding up to 300');
create function pg_temp.buy_on_shard(p_op text, p_tier int, p_shard int, p_qty int, p_at int) returns public.checkout_claim
language plpgsql as $$
declare
  v_claim public.checkout_claim;
begin
  -- Claims until one lands on p_shard (the others are cancelled: their seats leave at once).
  for i in 1 .. 200 loop
    v_claim := pg_temp.buy(p_op || '-' || i, pg_temp.items(p_tier, p_qty), p_at);
    if private.order_capacity_shard(v_claim.order_id, 8) = p_shard then
      update public.orders set status = 'cancelled' where checkout_operation_id like 'op-cap-' || p_op || '-%' and id <> v_claim.order_id;
      return v_claim;
    end if;
  end loop;
  raise exception 'no claim landed on shard %', p_shard;
end;
$$;
select is((pg_temp.buy_on_shard('s2', 5, pg_temp.shard_of('s1', 5), 2, 20)).outcome, 'created',
  'a claim whose shard is full still gets seats the other shards have');
select is((select sum(allotted)::int from private.tier_capacity where tier_id = pg_temp.tier(5)), 300,
  'the allotments, divided again, still add up to the capacity');
select is(pg_temp.over(5, 20), 0::bigint, 'and no shard takes more than its allotment');
select cmp_ok((select allotted from private.tier_capacity where tier_id = pg_temp.tier(5) and shard = pg_temp.shard_of('s1', 5)),
  '>=', 5, 'the full shard got allotment for s1 and the new claim');
select is(pg_temp.problems(5, 20), '', 'check_tier_capacity agrees after the slow path');

-- Exact sell-out on 8 shards: 300 seats sold one by one, the 301st is sold out.
update public.orders set status = 'cancelled' where checkout_operation_id like 'op-cap-s%';
select is(private.tier_seats_taken(pg_temp.tier(5), pg_temp.t(30)), 0::bigint, 'fixture: tier 5 empty again');
create function pg_temp.sell(p_prefix text, p_tier int, p_n int, p_at int) returns int language plpgsql as $$
declare
  v_sold int := 0;
begin
  for i in 1 .. p_n loop
    perform pg_temp.buy(p_prefix || i, pg_temp.items(p_tier, 1), p_at);
    v_sold := v_sold + 1;
  end loop;
  return v_sold;
end;
$$;
select is(pg_temp.sell('x', 5, 300, 40), 300, '300 claims of one seat each are all created');
select is(private.tier_seats_taken(pg_temp.tier(5), pg_temp.t(40)), 300::bigint, 'the tier is exactly full');
select throws_ok($$select pg_temp.buy('x301', pg_temp.items(5, 1), 40)$$, 'CK003', null,
  'the 301st seat is sold out');
select is(pg_temp.over(5, 40), 0::bigint, 'no shard over its allotment at the sell-out');
select is(pg_temp.problems(5, 40), '', 'check_tier_capacity agrees at the sell-out');

-- A seat freed on any shard is sold again, whichever shard the next claim lands on.
update public.orders set status = 'cancelled' where checkout_operation_id = 'op-cap-x7';
select is((pg_temp.buy('y1', pg_temp.items(5, 1), 50)).outcome, 'created', 'a freed seat is sold again');
select throws_ok($$select pg_temp.buy('y2', pg_temp.items(5, 1), 50)$$, 'CK003', null, 'and then the tier is full again');

-- A capacity change divides the allotments again, never below a shard's seats.
update events.ticket_tiers set capacity = 340 where id = pg_temp.tier(5);
select is((select sum(allotted)::int from private.tier_capacity where tier_id = pg_temp.tier(5)), 340,
  'raising the capacity divides the new figure');
select is(pg_temp.over(5, 60), 0::bigint, 'each shard keeps at least its seats');
select is(pg_temp.sell('z', 5, 40, 60), 40, 'the 40 new seats are sold');
select throws_ok($$select pg_temp.buy('z41', pg_temp.items(5, 1), 60)$$, 'CK003', null, 'and not one more');
update events.ticket_tiers set capacity = 200 where id = pg_temp.tier(5);
select is(pg_temp.allotments(5), '0,0,0,0,0,0,0,0', 'a capacity below the seats taken leaves no allotment');
select is(pg_temp.problems(5, 60), '', 'which check_tier_capacity accepts');
update public.orders set status = 'cancelled' where checkout_operation_id like 'op-cap-x%';
select is((pg_temp.buy('w1', pg_temp.items(5, 2), 70)).outcome, 'created',
  'once seats are free below the lowered capacity, a claim gets them (the slow path divides again)');
select is((select sum(allotted)::int from private.tier_capacity where tier_id = pg_temp.tier(5)), 200,
  'the allotments add up to the lowered capacity again');

-- check_tier_capacity reports broken allotments and seats on the wrong shard; repair fixes them.
update private.tier_capacity set allotted = allotted + 5 where tier_id = pg_temp.tier(5) and shard = 0;
select is(pg_temp.problems(5, 70), 'allotments do not add up to the capacity', 'an allotment that breaks the sum is reported');
update private.tier_capacity c set allotted = 0
where c.tier_id = pg_temp.tier(5) and c.shard = (select x.shard from private.tier_capacity x where x.tier_id = c.tier_id and x.paid_seats + x.held_seats > 0 order by x.shard limit 1);
select ok(pg_temp.problems(5, 70) like '%a shard takes more than its allotment%', 'a shard over its allotment is reported');
update private.tier_capacity c set held_seats = held_seats + case when c.shard = 0 then 1 else -1 end
where c.tier_id = pg_temp.tier(5) and c.shard in (0, (select x.shard from private.tier_capacity x where x.tier_id = c.tier_id and x.shard > 0 and x.held_seats > 0 order by x.shard limit 1));
select ok(pg_temp.problems(5, 70) like '%seats counted on the wrong shard%', 'seats moved to another shard are reported');
select is(public.repair_tier_capacity(pg_temp.tier(5), pg_temp.t(70)), 43::bigint, 'repair recounts the tier (y1, z1..z40, w1)');
select is(pg_temp.problems(5, 70), '', 'and divides its allotments again');

-- A late payment whose shard is full takes its seats back from the other shards' room.
select is((pg_temp.buy('late', pg_temp.items(6, 4), 0)).outcome, 'created', 'a claim of 4 seats of the 256-seat tier');
-- Fixture: every allotment on one other shard.
update private.tier_capacity c set allotted = 0 where c.tier_id = pg_temp.tier(6);
update private.tier_capacity c set allotted = 256 where c.tier_id = pg_temp.tier(6) and c.shard = (pg_temp.shard_of('late', 6) + 3) % 8;
select is((public.settle_checkout_session(jsonb_build_object('id', 'cs_test_cap_late', 'status', 'complete',
  'payment_status', 'paid', 'client_reference_id', pg_temp.order_of('late'), 'amount_total', 4000, 'currency', 'usd'),
  pg_temp.t(5000))).outcome, 'paid', 'its hold lapsed and its shard has no allotment, yet the tier has room: paid');
select is(pg_temp.problems(6, 5000), '', 'its shard was given the allotment for them');
select is(pg_temp.over(6, 5000), 0::bigint, 'no shard over its allotment after the late payment');

-- An order item references its tier through the counter row it counts on (the lock a claim
-- holds already), never the tier's own row, which every buyer of the tier would share.
select is((select array_agg(confrelid::regclass::text order by confrelid::regclass::text) from pg_constraint
           where conrelid = 'public.order_items'::regclass and contype = 'f'),
  array['orders', 'private.tier_capacity'], 'order items reference their order and their counter row');
insert into public.orders (id, event_id, guest_email, currency, amount_total, hold_expires_at, seats_held_until)
values ('08000000-0000-7000-8000-000000000005', 'e8000000-0000-4000-8000-000000000001', 'shard@example.com',
        'usd', 1000, now() + interval '1 hour', now() + interval '2 hours');
select throws_ok($$insert into public.order_items (order_id, tier_id, shard, product_name, quantity, unit_amount)
  values ('08000000-0000-7000-8000-000000000005', pg_temp.tier(5),
          (private.order_capacity_shard('08000000-0000-7000-8000-000000000005', 8) + 1) % 8, 'x', 1, 1000)$$,
  '23514', null, 'an item on another shard than its order''s is refused');
select lives_ok($$insert into public.order_items (order_id, tier_id, shard, product_name, quantity, unit_amount)
  values ('08000000-0000-7000-8000-000000000005', pg_temp.tier(5),
          private.order_capacity_shard('08000000-0000-7000-8000-000000000005', 8), 'x', 1, 1000)$$,
  'on its order''s shard it is counted');
-- A load with triggers off may name another shard: reported, and repaired.
set local session_replication_role = replica;
update public.order_items set shard = (shard + 1) % 8 where order_id = '08000000-0000-7000-8000-000000000005';
set local session_replication_role = origin;
select ok(pg_temp.problems(5, 5000) like '%order items name another shard than their order''s%',
  'an item on another shard than its order''s is reported');
select lives_ok($$select public.repair_tier_capacity(pg_temp.tier(5), pg_temp.t(5000))$$, 'repair runs');
select is((select shard::int from public.order_items where order_id = '08000000-0000-7000-8000-000000000005'),
  private.order_capacity_shard('08000000-0000-7000-8000-000000000005', 8), 'repair puts the item back on its order''s shard');
update public.orders set stripe_checkout_session_id = 'cs_test_shard_dup', stripe_payment_intent_id = 'pi_test_shard_dup'
where id = '08000000-0000-7000-8000-000000000005';
select throws_ok($$insert into public.orders (event_id, guest_email, currency, amount_total, hold_expires_at,
                                              seats_held_until, stripe_checkout_session_id)
  values ('e8000000-0000-4000-8000-000000000001', 'dup@example.com', 'usd', 1000, now() + interval '1 hour',
          now() + interval '2 hours', 'cs_test_shard_dup')$$,
  '23505', null, 'a session id belongs to one order (unique where set)');
select throws_ok($$delete from events.ticket_tiers where id = pg_temp.tier(5)$$, '23503', null,
  'a tier with order items cannot be deleted (its counter rows cascade, the items refuse)');

-- A 64-shard tier sells out exactly: made with 8,192 seats, lowered to 100 (about 1.6 seats per
-- shard, so most claims take the slow path), 100 claims one by one all get a seat, the 101st is
-- sold out, and the counters agree with the rows.
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
values (pg_temp.tier(9), 'e8000000-0000-4000-8000-000000000001', 'Tier 9', 1000, 8192, 10);
update events.ticket_tiers set capacity = 100 where id = pg_temp.tier(9);
select results_eq($$select count(*)::int, sum(allotted)::int from private.tier_capacity where tier_id = pg_temp.tier(9)$$,
  $$values (64, 100)$$, 'a tier made with 8,192 seats keeps its 64 shards, sharing its lowered capacity');
-- Each counter row on a heap page of its own, so that buyers of one tier never pin one page
-- together (a page pinned by many cannot be pruned; its updates overflow and spread the rows).
select is((select count(distinct (ctid::text::point)[0])::int from private.tier_capacity where tier_id = pg_temp.tier(9)),
  64, 'each of its 64 counter rows has a heap page of its own');
select is((select count(*) from generate_series(1, 100) g
           where (pg_temp.buy('s64-' || g, pg_temp.items(9, 1), 100)).outcome = 'created'), 100::bigint,
  'its 100 seats sold one by one, none refused while a seat was free');
select throws_ok($$select pg_temp.buy('s64-101', pg_temp.items(9, 1), 100)$$, 'CK003', null, 'the 101st is sold out');
select is(pg_temp.problems(9, 100), '', 'its counters agree with the rows, no shard over its allotment');

-- The order's total and its lines are priced from one read of the tiers: a price changed while
-- the claim runs (here by a trigger, right after the order row is written) changes neither.
create function pg_temp.reprice() returns trigger language plpgsql as $$
begin
  update events.ticket_tiers set unit_amount = unit_amount + 100 where id = pg_temp.tier(4);
  return null;
end;
$$;
create trigger reprice_during_claim after insert on public.orders for each row execute function pg_temp.reprice();
select is((pg_temp.buy('reprice', pg_temp.items(4, 2), 0)).amount_total, 2000, 'the claim is priced as the tier was read');
drop trigger reprice_during_claim on public.orders;
select results_eq($$select o.amount_total, sum(i.amount)::int, min(i.unit_amount) from public.orders o
                    join public.order_items i on i.order_id = o.id
                    where o.id = pg_temp.order_of('reprice') group by o.id$$,
  $$values (2000, 2000, 1000)$$, 'its lines carry the same prices as its total');

-- A claim's pending order adds no entry to the index of operation ids (random client keys: an
-- entry lands on a random leaf of an index as large as the history). Counted in pages, not time.
create temp table op_index_before as
  select pg_relation_size('public.orders_paid_operation_idx') as bytes;
insert into public.orders (event_id, guest_email, checkout_operation_id, currency, amount_total,
                           hold_expires_at, seats_held_until)
select (select event_id from events.ticket_tiers where id = pg_temp.tier(6)), 'op' || g || '@example.com',
       md5(g::text) || '-pending', 'usd', 1000, now(), now()
from generate_series(1, 2000) g;
select is(pg_relation_size('public.orders_paid_operation_idx'), (select bytes from op_index_before),
  '2,000 pending orders leave the index of operation ids as it was');
update public.orders set status = 'paid', paid_at = now()
where checkout_operation_id like '%-pending' and guest_email like 'op%@example.com';
select cmp_ok(pg_relation_size('public.orders_paid_operation_idx'), '>', (select bytes from op_index_before),
  'once paid, they are in it (what a claim looks them up by)');

-- A claim counts its own items (create_checkout_order) and marks that one statement, by its
-- transaction's id, for the counting trigger to skip; any other writer's items are counted,
-- even with a mark of another transaction left in the session.
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
values (pg_temp.tier(10), 'e8000000-0000-4000-8000-000000000001', 'Tier 10', 1000, 50, 10);
select is((pg_temp.buy('once', pg_temp.items(10, 3), 0)).outcome, 'created', 'a claim of 3 seats of tier 10');
select is(pg_temp.counter(10) || ', ' || (select count(*) from private.seat_holds where tier_id = pg_temp.tier(10)) || ' hold',
  '0 paid, 3 held, 1 hold', 'the claim counted its seats once, with one hold row');
select set_config('private.items_counted_by', (pg_current_xact_id()::text::bigint - 1)::text, false);
insert into public.orders (id, event_id, guest_email, currency, amount_total, hold_expires_at, seats_held_until)
values ('08000000-0000-7000-8000-000000000010', 'e8000000-0000-4000-8000-000000000001', 'mark@example.com',
        'usd', 2000, now() + interval '1 hour', now() + interval '2 hours');
select lives_ok($$insert into public.order_items (order_id, tier_id, shard, product_name, quantity, unit_amount)
  values ('08000000-0000-7000-8000-000000000010', pg_temp.tier(10), 0, 'x', 2, 1000)$$,
  'an operator inserts an item with another transaction''s mark left in the session');
select is(pg_temp.counter(10), '0 paid, 5 held', 'its seats are counted by the trigger all the same');
select set_config('private.items_counted_by', '', false);

-- A claim writes its shard's counter row once, by the update that locks it: a lock taken in the
-- fast path's subtransaction and the update after it in the parent are two transaction ids on
-- one row, which PostgreSQL records as a MultiXact, one per claim. None here, sharded or not
-- (one claim each: a second claim of a shard in the same transaction would make one, since
-- the first one's foreign key check left the row locked by the transaction's own id).
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
values (pg_temp.tier(11), 'e8000000-0000-4000-8000-000000000001', 'Tier 11', 1000, 8192, 10),
       (pg_temp.tier(12), 'e8000000-0000-4000-8000-000000000001', 'Tier 12', 1000, 10, 10);
checkpoint;
create temp table multixacts_before as select next_multixact_id::text::bigint as n from pg_control_checkpoint();
select is((pg_temp.buy('mx-64', pg_temp.items(11, 2), 0)).outcome, 'created', 'a claim on a 64-shard tier');
select is((pg_temp.buy('mx-1', pg_temp.items(12, 1), 0)).outcome, 'created', 'a claim on a one-shard tier');
checkpoint;
select is((select next_multixact_id::text::bigint from pg_control_checkpoint()) - (select n from multixacts_before), 0::bigint,
  'they made no MultiXact');
select is(pg_temp.counter(11) || '; ' || pg_temp.counter(12), '0 paid, 2 held; 0 paid, 1 held',
  'each counted its seats once');

select * from finish();
rollback;
