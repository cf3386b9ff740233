-- Cancelling an event: cancel_event marks it once, new checkouts are refused (CK008), a payment
-- that lands afterwards is a capacity_conflict, and event_cancellation_work /
-- event_cancellation_progress walk every order to expired or refunded (operation
-- cancel.<event>.<order>), a refund in flight waiting, one Stripe refused p_max_attempts times
-- left as failed.
-- The clock is t(x) = one day before the transaction's now() plus x seconds: progress compares
-- an order's updated_at (stamped with now() by its trigger) with the event's cancelled_at (p_now),
-- so every p_now here must lie before now().
begin;
select plan(70);

-- ------------------------------------------------------------------------------------------
-- Structure and privileges
-- ------------------------------------------------------------------------------------------
\ir helpers/functions.psql
select * from pg_temp.functions_are_api('cancellation', array[
  'public.cancel_event(uuid, text, timestamptz)',
  'public.event_cancellation_work(uuid, integer, uuid[], integer, timestamptz)',
  'public.event_cancellation_progress(uuid, integer, timestamptz)',
  'private.cancellation_operation_id(uuid, uuid)',
  'private.cancellation_step(public.orders, public.stripe_idempotency_keys, integer, timestamptz)']);
select columns_are('events', 'events', array['id', 'title', 'currency', 'status', 'starts_at', 'idempotency_key',
  'cancelled_at', 'cancellation_reason', 'created_at', 'updated_at'], 'events carry cancelled_at and cancellation_reason');

\ir helpers/refused.psql
select * from pg_temp.refused(array['anon', 'authenticated'], array[
  [$$select public.cancel_event('00000000-0000-4000-8000-000000000001')$$, 'cancel events'],
  [$$select * from public.event_cancellation_work('00000000-0000-4000-8000-000000000001')$$, 'list cancellation work'],
  [$$select * from public.event_cancellation_progress('00000000-0000-4000-8000-000000000001')$$, 'read cancellation progress']]);

-- ------------------------------------------------------------------------------------------
-- Fixtures: event X (ea…01) with tiers 7a000000-…-0000000000NN of 10 seats at 1000, event Y
-- (ea…02) for cancel_event alone, event Z (ea…03) with a checkout in flight.
-- ------------------------------------------------------------------------------------------
insert into events.events (id, title, currency, status) values
  ('ea000000-0000-4000-8000-000000000001', 'Cancelled Gig', 'usd', 'published'),
  ('ea000000-0000-4000-8000-000000000002', 'Other Gig', 'usd', 'published'),
  ('ea000000-0000-4000-8000-000000000003', 'Third Gig', 'usd', 'published');
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
select ('7a000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
       case when n = 8 then 'ea000000-0000-4000-8000-000000000003' else 'ea000000-0000-4000-8000-000000000001' end::uuid,
       'Tier ' || n, 1000, 10, 10
from generate_series(1, 8) n;

create function pg_temp.prefix() returns text language sql immutable as $$ select 'ce' $$;
create function pg_temp.tier(p_n int) returns uuid language sql immutable as $$
  select ('7a000000-0000-4000-8000-' || lpad(p_n::text, 12, '0'))::uuid
$$;
create function pg_temp.t(p_at int) returns timestamptz language sql stable as $$
  select date_trunc('second', now()) - interval '1 day' + make_interval(secs => p_at)
$$;
\ir helpers/orders.psql
\ir helpers/refunds.psql

-- X, the cancellation's refund operation of an order of X and its claim, what X's cancellation
-- lists and how far it is.
create function pg_temp.x() returns uuid language sql immutable as $$ select 'ea000000-0000-4000-8000-000000000001'::uuid $$;
create function pg_temp.op(p_name text) returns text language sql as $$
  select 'cancel.' || pg_temp.x() || '.' || pg_temp.oid(p_name)
$$;
create function pg_temp.cancel_claim(p_name text, p_at int) returns public.refund_claim language sql as $$
  select pg_temp.claim(pg_temp.op(p_name), pg_temp.oid(p_name), null, p_at, 'cancellation')
$$;
create function pg_temp.work(p_at int, p_limit int default 100, p_exclude uuid[] default '{}')
returns table (order_id uuid, step text, stripe_checkout_session_id text, operation_id text) language sql as $$
  select * from public.event_cancellation_work(pg_temp.x(), p_limit, p_exclude, 5, pg_temp.t(p_at))
$$;
create function pg_temp.step_of(p_name text, p_at int) returns text language sql as $$
  select step from pg_temp.work(p_at) where order_id = pg_temp.oid(p_name)
$$;
create function pg_temp.progress(p_at int)
returns table (status text, refunded bigint, expired bigint, failed bigint, remaining bigint) language sql as $$
  select * from public.event_cancellation_progress(pg_temp.x(), 5, pg_temp.t(p_at))
$$;

-- Orders of X before the cancellation: four paid (p4 partially refunded by an operator), one
-- fully refunded (r), four pending with a session (s1, s2; l, which pays afterwards; a, which
-- pays afterwards by a delayed method).
do $$ begin
  perform pg_temp.paid('p1', 1, 2, 0);
  perform pg_temp.paid('p2', 2, 1, 0);
  perform pg_temp.paid('p3', 3, 1, 0);
  perform pg_temp.paid('p4', 4, 3, 0);
  perform pg_temp.paid('r', 7, 1, 0);
  perform pg_temp.checkout('s1', 5, 1, pg_temp.t(100), 'cs_test_ce_s1');
  perform pg_temp.checkout('s2', 5, 1, pg_temp.t(100), 'cs_test_ce_s2');
  perform pg_temp.checkout('l', 6, 1, pg_temp.t(100), 'cs_test_ce_l');
  perform pg_temp.checkout('a', 6, 2, pg_temp.t(100), 'cs_test_ce_a');
  perform pg_temp.claim('rf-ce-p4', pg_temp.oid('p4'), 1000, 200, 'operator');
  perform pg_temp.record('rf-ce-p4', pg_temp.re('re_ce_p4_op', 1000, 'p4'), 210);
  perform pg_temp.claim('rf-ce-r', pg_temp.oid('r'), null, 200, 'operator');
  perform pg_temp.record('rf-ce-r', pg_temp.re('re_ce_r_op', 1000, 'r'), 210);
end $$;
select is((select count(*)::int from pg_temp.progress(300)), 0, 'an event that is not cancelled has no progress row');

-- ------------------------------------------------------------------------------------------
-- cancel_event
-- ------------------------------------------------------------------------------------------
select row_eq($$select status, cancelled_at, cancellation_reason from public.cancel_event(pg_temp.x(), 'Venue flooded', pg_temp.t(1000))$$,
  row('cancelled'::text, pg_temp.t(1000), 'Venue flooded'::text), 'cancel_event marks the event cancelled, with when and why');
select row_eq($$select status, cancelled_at, cancellation_reason from public.cancel_event(pg_temp.x(), 'Another reason', pg_temp.t(2000))$$,
  row('cancelled'::text, pg_temp.t(1000), 'Venue flooded'::text), 'a second call keeps the first time and reason');
select row_eq($$select status, cancelled_at, cancellation_reason from public.cancel_event('ea000000-0000-4000-8000-000000000002', null, pg_temp.t(1000))$$,
  row('cancelled'::text, pg_temp.t(1000), null::text), 'an event cancelled without a reason');
select row_eq($$select cancelled_at, cancellation_reason from public.cancel_event('ea000000-0000-4000-8000-000000000002', 'Late reason', pg_temp.t(2000))$$,
  row(pg_temp.t(1000), null::text), 'keeps having none: the second call changes nothing');
select is(pg_temp.error_of($$select public.cancel_event('ea000000-0000-4000-8000-00000000dead')$$),
  'CE001:ea000000-0000-4000-8000-00000000dead', 'an unknown event: CE001');

select is(pg_temp.error_of($$select pg_temp.checkout('new', 1, 1, pg_temp.t(1001))$$),
  'CK008:' || pg_temp.x(), 'a new checkout for the cancelled event: CK008');
select is((select count(*)::int from public.stripe_idempotency_keys where operation_id = 'op-ce-new'), 0,
  'the refused checkout wrote nothing');

-- A payment that lands after the cancellation is a capacity conflict, to refund.
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_ce_pay_l', 'checkout.session.completed', pg_temp.session('l'), 1010)$$,
  row('capacity_conflict'::text, pg_temp.oid('l')), 'a payment after the cancellation is a capacity conflict');
select row_eq($$select (o).status, (o).paid_at, (o).stripe_payment_intent_id from (select pg_temp.ord('l') o) x$$,
  row('capacity_conflict'::text, pg_temp.t(1010), 'pi_ce_l'::text), 'the order records the payment');
select ok((select last_error like 'capacity_conflict: paid after its event was cancelled%'
           from public.stripe_webhook_events where stripe_event_id = 'evt_ce_pay_l'), 'and the event says why');
select is(array(select * from pg_temp.conflicts()), array['conflict.' || pg_temp.oid('l')], 'reconciliation would refund it too');

-- A session completed by a delayed payment method after the cancellation: the money is not
-- there yet and the session cannot be expired any more, so the cancellation waits for it.
select is((pg_temp.deliver('evt_ce_complete_a', 'checkout.session.completed', pg_temp.session('a', 'unpaid'), 1012)).outcome,
  'capacity_conflict', 'a delayed payment completing after the cancellation is a capacity conflict');
select row_eq($$select (o).status, (o).session_completed_at, (o).paid_at from (select pg_temp.ord('a') o) x$$,
  row('pending'::text, pg_temp.t(1012), null::timestamptz), 'the order records that its session completed, not paid yet');

-- ------------------------------------------------------------------------------------------
-- The work: expire the open sessions, refund the payments
-- ------------------------------------------------------------------------------------------
create temp table expected as
  select pg_temp.oid(name) as order_id, case when name like 's%' then 'expire' else 'refund' end as step,
         session_id as stripe_checkout_session_id, pg_temp.op(name) as operation_id
  from pg_temp.claims where name in ('p1', 'p2', 'p3', 'p4', 's1', 's2', 'l');
select results_eq('select * from pg_temp.work(1020)', 'select * from expected order by order_id',
  'open sessions are to expire, payments (the conflict included) to refund, in order id order; neither the refunded order nor the completed session is listed');
select results_eq('select order_id from pg_temp.work(1020, 2)', 'select order_id from expected order by order_id limit 2',
  'p_limit bounds a batch');
select results_eq($$select order_id from pg_temp.work(1020, 100, array(select order_id from expected order by order_id limit 2))$$,
  'select order_id from expected order by order_id offset 2', 'p_exclude skips what this run handled');
select row_eq('select * from pg_temp.progress(1020)', row('in_progress'::text, 0::bigint, 0::bigint, 0::bigint, 8::bigint),
  'progress: eight orders remain, the completed session waited for');

-- p1: refunded in full.
select row_eq($$select outcome, amount from pg_temp.cancel_claim('p1', 1030)$$,
  row('created'::text, 2000), 'the refund of a paid order is claimed for all of it');
select is(pg_temp.record(pg_temp.op('p1'), pg_temp.re('re_ce_p1', 2000, 'p1'), 1031) ->> 'orderStatus', 'refunded',
  'and recorded');
select is(pg_temp.step_of('p1', 1032), null, 'a refunded order is no longer listed');

-- p2: a claim in flight waits; after its lease it is listed again and taken over.
create temp table p2_claim as select * from pg_temp.cancel_claim('p2', 1040);
select is(pg_temp.step_of('p2', 1050), null, 'a refund in flight (live lease) is not listed');
select is((select remaining from pg_temp.progress(1050)), 7::bigint, 'but it is counted in remaining');
select is(pg_temp.step_of('p2', 1101), 'refund', 'after its lease expired it is listed again');
select row_eq($$select outcome, stripe_idempotency_key, refund_id from pg_temp.cancel_claim('p2', 1101)$$,
  (select row('takeover'::text, stripe_idempotency_key, refund_id) from p2_claim),
  'the next run takes it over with the same key and reservation');
select is(pg_temp.record(pg_temp.op('p2'), pg_temp.re('re_ce_p2', 1000, 'p2'), 1102) ->> 'orderStatus', 'refunded',
  'and records it');

-- p3: Stripe refuses the refund five times.
do $$ begin
  for i in 1..4 loop
    perform pg_temp.cancel_claim('p3', 1200 + 2 * i);
    perform public.release_refund(pg_temp.op('p3'), pg_temp.lease(pg_temp.op('p3')), true,
      'StripeInvalidRequestError: refused ' || i, pg_temp.t(1201 + 2 * i));
  end loop;
end $$;
select is(pg_temp.step_of('p3', 1220), 'refund', 'after four refusals it is still listed to refund');
select row_eq($$select outcome, attempt from pg_temp.cancel_claim('p3', 1221)$$,
  row('retry'::text, 5), 'the fifth attempt');
select is(public.release_refund(pg_temp.op('p3'), pg_temp.lease(pg_temp.op('p3')), true, 'StripeInvalidRequestError: refused 5',
  pg_temp.t(1222)), 'failed', 'is refused too');
select is(pg_temp.step_of('p3', 1223), null, 'after the fifth refusal it is no longer listed');
select row_eq($$select status, last_error from public.refunds where operation_id = pg_temp.op('p3')$$,
  row('failed'::text, 'StripeInvalidRequestError: refused 5'::text), 'the refund row keeps the reason for an operator');
select row_eq('select failed, remaining from pg_temp.progress(1223)', row(1::bigint, 5::bigint),
  'progress counts it failed, not remaining');

-- p4: the rest of a partially refunded order.
select row_eq($$select outcome, amount from pg_temp.cancel_claim('p4', 1300)$$,
  row('created'::text, 2000), 'a partially refunded order is refunded for what is left');
select is(pg_temp.record(pg_temp.op('p4'), pg_temp.re('re_ce_p4', 2000, 'p4'), 1301) ->> 'orderStatus', 'refunded',
  'which makes it refunded');
select is((pg_temp.ord('p4')).amount_refunded, 3000, 'by both refunds');

-- l: the cancellation and reconciliation both want to refund it; the reservation decides.
select row_eq($$select outcome, amount from pg_temp.cancel_claim('l', 1310)$$,
  row('created'::text, 1000), 'the cancellation claims the conflict''s refund');
select is(pg_temp.error_of($$select pg_temp.claim('conflict.' || pg_temp.oid('l'), pg_temp.oid('l'), null, 1311, 'capacity_conflict')$$),
  'RF003:0', 'reconciliation finds nothing left to refund');
select is(array(select * from pg_temp.conflicts()), '{}'::text[],
  'and does not list the conflict while another refund holds all of it');
select is(pg_temp.step_of('l', 1312), null, 'the cancellation''s claim in flight is not listed');
select is(pg_temp.record(pg_temp.op('l'), pg_temp.re('re_ce_l', 1000, 'l'), 1313) ->> 'orderStatus', 'refunded',
  'the refund is recorded');
select is(array(select * from pg_temp.conflicts()), '{}'::text[], 'and the conflict is no longer listed for reconciliation');

-- a: the delayed payment arrives, after the cancellation: a conflict to refund.
select is((pg_temp.deliver('evt_ce_paid_a', 'checkout.session.async_payment_succeeded', pg_temp.session('a'), 1320)).outcome,
  'capacity_conflict', 'the delayed payment succeeding is a capacity conflict');
select is(pg_temp.step_of('a', 1321), 'refund', 'now it is to refund');
select row_eq($$select outcome, amount from pg_temp.cancel_claim('a', 1321)$$,
  row('created'::text, 2000), 'its refund is claimed in full');
select is(pg_temp.record(pg_temp.op('a'), pg_temp.re('re_ce_a', 2000, 'a'), 1322) ->> 'orderStatus', 'refunded',
  'and recorded');

-- s1, s2: the open sessions expire at Stripe (the webhook, or a retrieved session).
select is((pg_temp.deliver('evt_ce_s1_expired', 'checkout.session.expired', pg_temp.session('s1', 'unpaid'), 1400)).outcome,
  'expired', 'checkout.session.expired ends s1');
select row_eq('select status, remaining from pg_temp.progress(1401)', row('in_progress'::text, 1::bigint),
  'one order remains');
select is((public.settle_checkout_session(pg_temp.session('s2', 'unpaid') || '{"status":"expired"}', pg_temp.t(1402))).outcome,
  'expired', 'a retrieved expired session ends s2');

select row_eq('select * from pg_temp.progress(1403)', row('completed'::text, 5::bigint, 2::bigint, 1::bigint, 0::bigint),
  'completed: five refunds, two expired checkouts, one refund Stripe refused');
select is((select count(*)::int from pg_temp.work(1403)), 0, 'nothing is left to do');
select results_eq($$select name, (o).status from (select name, pg_temp.ord(name) o from pg_temp.claims
                    where name in ('p1', 'p2', 'p3', 'p4', 'r', 's1', 's2', 'l', 'a')) x order by name$$,
  $$values ('a'::text, 'refunded'::text), ('l', 'refunded'), ('p1', 'refunded'), ('p2', 'refunded'), ('p3', 'paid'), ('p4', 'refunded'),
           ('r', 'refunded'), ('s1', 'expired'), ('s2', 'expired')$$,
  'every order ended refunded or expired, except the one left to an operator');
select results_eq($$select n, private.tier_seats_taken(pg_temp.tier(n), pg_temp.t(1403)) from generate_series(1, 7) n order by n$$,
  $$values (1, 0::bigint), (2, 0::bigint), (3, 1::bigint), (4, 0::bigint), (5, 0::bigint), (6, 0::bigint), (7, 0::bigint)$$,
  'only the unrefunded order still holds a seat');
select is(pg_temp.disagreeing(1403), 0::bigint, 'the counters agree with the orders');

-- ------------------------------------------------------------------------------------------
-- A checkout in flight (no session yet) waits; once its session is recorded it is to expire
-- ------------------------------------------------------------------------------------------
do $$ begin perform pg_temp.checkout('z', 8, 1, pg_temp.t(0)); end $$;
select lives_ok($$select public.cancel_event('ea000000-0000-4000-8000-000000000003', null, pg_temp.t(100))$$, 'Z is cancelled');
select is((select count(*)::int from public.event_cancellation_work('ea000000-0000-4000-8000-000000000003', 10, '{}', 5, pg_temp.t(101))), 0,
  'a pending order without a session is not listed');
select row_eq($$select status, remaining from public.event_cancellation_progress('ea000000-0000-4000-8000-000000000003', 5, pg_temp.t(101))$$,
  row('in_progress'::text, 1::bigint), 'but it is waited for');
select lives_ok($$select public.record_checkout('op-ce-z', (select (c).lease_token from pg_temp.claims where name = 'z'),
                    'cs_test_ce_z', '{"sessionId":"cs_test_ce_z"}', pg_temp.t(102))$$, 'its session is recorded');
select row_eq($$select step, stripe_checkout_session_id from public.event_cancellation_work('ea000000-0000-4000-8000-000000000003', 10, '{}', 5, pg_temp.t(103))$$,
  row('expire'::text, 'cs_test_ce_z'::text), 'then it is to expire');

-- service_role (what the endpoints run as, not a superuser) may run the whole cancellation.
insert into events.events (id, title, currency, status) values
  ('ea000000-0000-4000-8000-000000000004', 'Service Gig', 'usd', 'published');
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order) values
  ('7a000000-0000-4000-8000-000000000009', 'ea000000-0000-4000-8000-000000000004', 'Tier 9', 1000, 10, 10);
do $$ begin perform pg_temp.paid('sr', 9, 1, 0); end $$;
do $$ begin perform set_config('ce.sr_order', pg_temp.oid('sr')::text, true); end $$;
set local role service_role;
select lives_ok($sql$do $do$
declare
  v_event uuid := 'ea000000-0000-4000-8000-000000000004';
  v_order uuid := current_setting('ce.sr_order')::uuid;
  v_op text := 'cancel.' || v_event || '.' || v_order;
  v_claim public.refund_claim;
begin
  perform public.cancel_event(v_event, 'Service role');
  if (select step from public.event_cancellation_work(v_event)) is distinct from 'refund' then
    raise exception 'the paid order is not listed';
  end if;
  v_claim := public.claim_refund(v_op, 'refund:create:' || v_op || ':' || gen_random_uuid(), repeat('b', 64),
    gen_random_uuid(), v_order, null, null, 'cancellation');
  perform public.record_refund(v_op, v_claim.lease_token, jsonb_build_object('id', 're_ce_sr', 'amount', 1000,
    'payment_intent', 'pi_ce_sr', 'status', 'succeeded'));
  if (select status from public.event_cancellation_progress(v_event)) is distinct from 'completed' then
    raise exception 'the cancellation is not completed';
  end if;
end
$do$$sql$, 'service_role cancels an event, lists its work, refunds it and reads its progress');
reset role;

select * from finish();
rollback;
