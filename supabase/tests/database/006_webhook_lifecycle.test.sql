-- The order lifecycle driven by Stripe webhook events (process_stripe_webhook_event and
-- apply_checkout_session_event), and the reconciliation of stuck attempts (claim_stuck_checkouts).
-- Every scenario uses its own tier, event ids and operation ids, so no count depends on other rows.
begin;
select plan(94);

-- Structure: the three functions, their arguments and what they return.
create temp table functions (n int primary key, schema name, name name, args text[], returns text);
insert into functions values
  (1, 'public', 'process_stripe_webhook_event', array['text', 'text', 'boolean', 'jsonb', 'timestamp with time zone', 'jsonb'],
   'webhook_result'),
  (2, 'private', 'apply_checkout_session_event', array['text', 'jsonb', 'timestamp with time zone'], 'webhook_result'),
  (3, 'public', 'claim_stuck_checkouts', array['integer', 'integer', 'integer', 'timestamp with time zone', 'text[]'],
   'setof checkout_claim');
select has_function(schema, name, args, name || ' exists') from functions order by n;
select function_returns(schema, name, args, returns) from functions order by n;
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
   where p.oid in ('public.process_stripe_webhook_event(text, text, boolean, jsonb, timestamptz, jsonb)'::regprocedure,
                   'private.apply_checkout_session_event(text, jsonb, timestamptz)'::regprocedure,
                   'public.claim_stuck_checkouts(integer, integer, integer, timestamptz, text[])'::regprocedure)
     and p.proconfig = array['search_path=""']),
  array['apply_checkout_session_event', 'claim_stuck_checkouts', 'process_stripe_webhook_event'],
  'the three functions set search_path = ''''');
select ok(
  has_function_privilege('service_role', 'public.process_stripe_webhook_event(text, text, boolean, jsonb, timestamptz, jsonb)', 'execute')
  and has_function_privilege('service_role', 'private.apply_checkout_session_event(text, jsonb, timestamptz)', 'execute')
  and has_function_privilege('service_role', 'public.claim_stuck_checkouts(integer, integer, integer, timestamptz, text[])', 'execute'),
  'service_role may call the three functions');

-- Privileges
\ir helpers/refused.psql
select * from pg_temp.refused(array['anon', 'authenticated'], array[
  [$$select public.process_stripe_webhook_event('evt_refused_1', 'checkout.session.completed', false, '{}')$$,
   'process webhook events'],
  [$$select private.apply_checkout_session_event('checkout.session.completed', '{}')$$,
   'apply checkout session events'],
  [$$select * from public.claim_stuck_checkouts()$$, 'claim stuck checkouts']]);

-- Fixtures: one event, one tier per scenario (76000000-…-0000000000NN), 1000 per ticket.
insert into events.events (id, title, currency, status) values
  ('e6000000-0000-4000-8000-000000000001', 'Webhook Gig', 'eur', 'published');
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
select ('76000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'e6000000-0000-4000-8000-000000000001',
       'Tier ' || n, 1000, case when n in (5, 6) then 4 when n in (7, 9) then null else 10 end, 10
from generate_series(1, 9) n;

create function pg_temp.tier(p_n int) returns uuid language sql immutable as $$
  select ('76000000-0000-4000-8000-' || lpad(p_n::text, 12, '0'))::uuid
$$;
-- Webhook scenarios run at t0 = 2030-01-01 12:00 UTC; reconciliation at s0 = 2001-01-01 00:00 UTC.
create function pg_temp.t(p_at int) returns timestamptz language sql immutable as $$
  select '2030-01-01 12:00:00+00'::timestamptz + make_interval(secs => p_at)
$$;
create function pg_temp.s(p_at int) returns timestamptz language sql immutable as $$
  select '2001-01-01 00:00:00+00'::timestamptz + make_interval(secs => p_at)
$$;
create function pg_temp.taken(p_tier int, p_at int) returns bigint language sql as $$
  select private.tier_seats_taken(pg_temp.tier(p_tier), pg_temp.t(p_at))
$$;

-- A checkout (hold 1800 s, lease 60 s) of p_qty seats of one tier, recorded with p_session if given.
create temp table claims (name text primary key, session_id text, c public.checkout_claim);
create function pg_temp.checkout(p_name text, p_tier int, p_qty int, p_now timestamptz, p_session text default null)
returns public.checkout_claim language plpgsql as $$
declare
  v_op text := 'op-wh-' || p_name;
  v_claim public.checkout_claim;
begin
  v_claim := public.claim_checkout(v_op, 'checkout:create:' || v_op || ':' || gen_random_uuid(), repeat('a', 64),
    gen_random_uuid(), 'e6000000-0000-4000-8000-000000000001',
    jsonb_build_array(jsonb_build_object('tierId', pg_temp.tier(p_tier), 'quantity', p_qty)),
    null, 'buyer@example.com', 'Buyer', 'http://shop.test/ok', 'http://shop.test/cancel', 1800, 60, p_now);
  if p_session is not null then
    perform public.record_checkout(v_op, v_claim.lease_token, p_session,
      jsonb_build_object('sessionId', p_session), p_now + interval '1 second');
  end if;
  insert into pg_temp.claims values (p_name, p_session, v_claim);
  return v_claim;
end;
$$;
create function pg_temp.oid(p_name text) returns uuid language sql as $$
  select (c).order_id from pg_temp.claims where name = p_name
$$;
create function pg_temp.ord(p_name text) returns public.orders language sql as $$
  select o from public.orders o where o.id = pg_temp.oid(p_name)
$$;
-- The Checkout Session object Stripe would send for that checkout.
create function pg_temp.session(p_name text, p_payment_status text default 'paid') returns jsonb language sql as $$
  select jsonb_build_object('id', coalesce(session_id, 'cs_test_unrecorded'), 'object', 'checkout.session',
    'client_reference_id', (c).order_id,
    'metadata', jsonb_build_object('order_id', (c).order_id, 'event_id', (c).event_id),
    'amount_total', (c).amount_total, 'currency', (c).currency, 'payment_status', p_payment_status)
  from pg_temp.claims where name = p_name
$$;
create function pg_temp.deliver(p_evt text, p_type text, p_session jsonb, p_at int)
returns public.webhook_result language sql as $$
  select public.process_stripe_webhook_event(p_evt, p_type, false,
    jsonb_build_object('id', p_evt, 'object', 'event', 'type', p_type, 'livemode', false,
                       'data', jsonb_build_object('object', p_session)),
    pg_temp.t(p_at))
$$;
create function pg_temp.evt(p_evt text) returns public.stripe_webhook_events language sql as $$
  select e from public.stripe_webhook_events e where e.stripe_event_id = p_evt
$$;

do $$ begin perform pg_temp.checkout('paid', 1, 2, pg_temp.t(0), 'cs_test_wh_paid'); end $$;
do $$ begin perform pg_temp.checkout('expired', 2, 3, pg_temp.t(0), 'cs_test_wh_expired'); end $$;
do $$ begin perform pg_temp.checkout('failed', 3, 1, pg_temp.t(0), 'cs_test_wh_failed'); end $$;
do $$ begin perform pg_temp.checkout('async', 4, 2, pg_temp.t(0), 'cs_test_wh_async'); end $$;
do $$ begin perform pg_temp.checkout('late-free', 5, 2, pg_temp.t(0), 'cs_test_wh_late_free'); end $$;
do $$ begin perform pg_temp.checkout('late-full', 6, 2, pg_temp.t(0), 'cs_test_wh_late_full'); end $$;
do $$ begin perform pg_temp.checkout('checked', 7, 1, pg_temp.t(0), 'cs_test_wh_checked'); end $$;
do $$ begin perform pg_temp.checkout('fallback', 7, 1, pg_temp.t(0), 'cs_test_wh_fallback'); end $$;

-- completed + paid → paid
select is(pg_temp.taken(1, 60), 2::bigint, 'a pending order holds its seats');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_paid_1', 'checkout.session.completed', pg_temp.session('paid'), 60)$$,
  row('paid'::text, pg_temp.oid('paid')), 'a paid completed session pays its order');
select row_eq($$select (o).status, (o).paid_at from (select pg_temp.ord('paid') o) x$$,
  row('paid'::text, pg_temp.t(60)), 'the order is paid at the event''s time');
select row_eq($$select (e).type, (e).processed_at, (e).attempts, (e).last_error from (select pg_temp.evt('evt_wh_paid_1') e) x$$,
  row('checkout.session.completed'::text, pg_temp.t(60), 1, null::text), 'the event is stored as processed, without error');

-- the same event again → duplicate, nothing changes
create temp table snap_paid as select to_jsonb(pg_temp.ord('paid')) as j;
select is((pg_temp.deliver('evt_wh_paid_1', 'checkout.session.completed', pg_temp.session('paid'), 120)).outcome,
  'duplicate', 'a redelivered event is a duplicate');
select is(to_jsonb(pg_temp.ord('paid')), (select j from snap_paid), 'the duplicate changes nothing on the order');
select row_eq($$select count(*)::int, min(processed_at), max(attempts) from public.stripe_webhook_events where stripe_event_id = 'evt_wh_paid_1'$$,
  row(1, pg_temp.t(60), 1), 'the event row exists once, processed the first time');

-- a late expiry never undoes paid
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_paid_2', 'checkout.session.expired', pg_temp.session('paid'), 1801)$$,
  row('noop'::text, pg_temp.oid('paid')), 'an expiry after the payment is a noop');
select is((pg_temp.ord('paid')).status, 'paid', 'the order stays paid');
select is(pg_temp.taken(1, 1800 + 86400 * 365), 2::bigint, 'a paid order keeps its seats long after its hold time');

-- expired on a pending order → expired, hold released
select is(pg_temp.taken(2, 100), 3::bigint, 'the pending order holds 3 seats');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_expired_1', 'checkout.session.expired', pg_temp.session('expired', 'unpaid'), 100)$$,
  row('expired'::text, pg_temp.oid('expired')), 'an expired session expires its pending order');
select is((pg_temp.ord('expired')).status, 'expired', 'the order is expired');
select is(pg_temp.taken(2, 100), 0::bigint, 'its seats are released at once, before the hold time');

-- async_payment_failed on a pending order → cancelled, hold released
select is(pg_temp.taken(3, 100), 1::bigint, 'the pending order holds 1 seat');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_failed_1', 'checkout.session.async_payment_failed', pg_temp.session('failed', 'unpaid'), 100)$$,
  row('cancelled'::text, pg_temp.oid('failed')), 'a failed async payment cancels its pending order');
select is((pg_temp.ord('failed')).status, 'cancelled', 'the order is cancelled');
select is(pg_temp.taken(3, 100), 0::bigint, 'a cancelled order holds no seats');

-- completed + unpaid → awaiting_payment (hold extended), then async_payment_succeeded → paid
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_async_1', 'checkout.session.completed', pg_temp.session('async', 'unpaid'), 100)$$,
  row('awaiting_payment'::text, pg_temp.oid('async')), 'a completed but unpaid session awaits its payment');
select row_eq($$select (o).status, (o).paid_at from (select pg_temp.ord('async') o) x$$,
  row('pending'::text, null::timestamptz), 'the order is still pending');
select is(pg_temp.taken(4, 1800 + 86400 * 3), 2::bigint, 'its seats are still held days after the original hold would have ended');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_async_2', 'checkout.session.async_payment_succeeded', pg_temp.session('async'), 86400 * 2)$$,
  row('paid'::text, pg_temp.oid('async')), 'the async payment succeeding pays the order');
select row_eq($$select (o).status, (o).paid_at from (select pg_temp.ord('async') o) x$$,
  row('paid'::text, pg_temp.t(86400 * 2)), 'the order is paid when the money arrived');

-- completed after expired, seats still free → paid, counted again
select is((pg_temp.deliver('evt_wh_late_free_1', 'checkout.session.expired', pg_temp.session('late-free', 'unpaid'), 100)).outcome,
  'expired', 'the order expires first');
select is(pg_temp.taken(5, 150), 0::bigint, 'its seats are free');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_late_free_2', 'checkout.session.completed', pg_temp.session('late-free'), 200)$$,
  row('paid'::text, pg_temp.oid('late-free')), 'a payment after the expiry is applied when the seats are still free');
select is((pg_temp.ord('late-free')).status, 'paid', 'the expired order becomes paid');
select is(pg_temp.taken(5, 200), 2::bigint, 'and counts against capacity again');

-- completed after expired, seats taken by others meanwhile → capacity_conflict
select is((pg_temp.deliver('evt_wh_late_full_1', 'checkout.session.expired', pg_temp.session('late-full', 'unpaid'), 100)).outcome,
  'expired', 'the order expires first');
select is((pg_temp.checkout('late-full-other-1', 6, 3, pg_temp.t(150), 'cs_test_wh_late_full_o1')).outcome, 'created',
  'another buyer takes 3 of the 4 released seats');
select is((pg_temp.checkout('late-full-other-2', 6, 1, pg_temp.t(160))).outcome, 'created',
  'another buyer takes the last seat');
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_late_full_2', 'checkout.session.completed', pg_temp.session('late-full'), 200)$$,
  row('capacity_conflict'::text, pg_temp.oid('late-full')), 'a payment for seats sold meanwhile is a capacity conflict');
select row_eq($$select (o).status, (o).paid_at from (select pg_temp.ord('late-full') o) x$$,
  row('capacity_conflict'::text, pg_temp.t(200)), 'the order records the payment that found no seats (for its refund)');
select is(pg_temp.taken(6, 200), 4::bigint, 'the tier is not oversold');
select row_eq($$select (e).processed_at, (e).last_error like 'capacity_conflict%' from (select pg_temp.evt('evt_wh_late_full_2') e) x$$,
  row(pg_temp.t(200), true), 'the event is processed and records the conflict for an operator');

-- cross-checks → mismatch, order unchanged
create temp table snap_checked as select to_jsonb(pg_temp.ord('checked')) as j;
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_mm_amount', 'checkout.session.completed',
                  jsonb_set(pg_temp.session('checked'), '{amount_total}', '999'), 100)$$,
  row('mismatch'::text, pg_temp.oid('checked')), 'another amount is a mismatch');
select row_eq($$select (e).processed_at, (e).last_error like 'mismatch%' from (select pg_temp.evt('evt_wh_mm_amount') e) x$$,
  row(pg_temp.t(100), true), 'the mismatch is processed with its error recorded');
select is((pg_temp.deliver('evt_wh_mm_currency', 'checkout.session.completed',
             jsonb_set(pg_temp.session('checked'), '{currency}', '"usd"'), 100)).outcome,
  'mismatch', 'another currency is a mismatch');
select is((pg_temp.deliver('evt_wh_mm_session', 'checkout.session.completed',
             jsonb_set(pg_temp.session('checked'), '{id}', '"cs_test_wh_someone_else"'), 100)).outcome,
  'mismatch', 'another session than the order''s is a mismatch');
select is((pg_temp.deliver('evt_wh_mm_metadata', 'checkout.session.completed',
             jsonb_set(pg_temp.session('checked'), '{metadata,order_id}', to_jsonb(pg_temp.oid('fallback'))), 100)).outcome,
  'mismatch', 'metadata.order_id differing from client_reference_id is a mismatch');
select is((pg_temp.deliver('evt_wh_mm_expired', 'checkout.session.expired',
             jsonb_set(pg_temp.session('checked', 'unpaid'), '{amount_total}', '1'), 100)).outcome,
  'mismatch', 'an expiry is cross-checked too');
select is(to_jsonb(pg_temp.ord('checked')), (select j from snap_checked), 'no mismatch changed the order');
select is((pg_temp.ord('fallback')).status, 'pending', 'nor the order named in the forged metadata');
select is((select count(*)::int from public.stripe_webhook_events
           where stripe_event_id like 'evt_wh_mm_%' and processed_at is not null and last_error like 'mismatch: %'), 5,
  'every mismatch is stored once, processed, with its error');

-- unmatched
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_unmatched_1', 'checkout.session.completed',
                  jsonb_set(jsonb_set(pg_temp.session('checked'), '{client_reference_id}', '"e6000000-0000-4000-8000-00000000dead"'),
                            '{metadata,order_id}', '"e6000000-0000-4000-8000-00000000dead"'), 100)$$,
  row('unmatched'::text, null::uuid), 'an unknown order id is unmatched');
select is((pg_temp.deliver('evt_wh_unmatched_2', 'checkout.session.completed',
             (pg_temp.session('checked') - 'client_reference_id') #- '{metadata,order_id}', 100)).outcome,
  'unmatched', 'a session naming no order is unmatched');
select is((pg_temp.deliver('evt_wh_unmatched_3', 'checkout.session.completed',
             jsonb_set(pg_temp.session('checked') #- '{metadata,order_id}', '{client_reference_id}', '"not-a-uuid"'), 100)).outcome,
  'unmatched', 'a reference that is not a uuid is unmatched');
select row_eq($$select count(*)::int, count(processed_at)::int, bool_and(last_error like 'unmatched%')
               from public.stripe_webhook_events where stripe_event_id like 'evt_wh_unmatched_%'$$,
  row(3, 3, true), 'unmatched events are stored, processed, with their error');
select is(to_jsonb(pg_temp.ord('checked')), (select j from snap_checked), 'unmatched events changed nothing');
-- Without client_reference_id the order is found through metadata.order_id.
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_fallback_1', 'checkout.session.expired',
                  pg_temp.session('fallback', 'unpaid') - 'client_reference_id', 100)$$,
  row('expired'::text, pg_temp.oid('fallback')), 'without client_reference_id, metadata.order_id names the order');

-- other event types → ignored, stored once, processed
select row_eq($$select outcome, order_id from pg_temp.deliver('evt_wh_ignored_1', 'payment_intent.created',
                  '{"id":"pi_test_wh_1","object":"payment_intent"}', 100)$$,
  row('ignored'::text, null::uuid), 'another event type is ignored');
select is((pg_temp.deliver('evt_wh_ignored_1', 'payment_intent.created', '{"id":"pi_test_wh_1","object":"payment_intent"}', 110)).outcome,
  'duplicate', 'and its redelivery is a duplicate');
select row_eq($$select count(*)::int, min(processed_at), max(last_error) from public.stripe_webhook_events where stripe_event_id = 'evt_wh_ignored_1'$$,
  row(1, pg_temp.t(100), null::text), 'the ignored event is stored once, processed, without error');
select is((private.apply_checkout_session_event('checkout.session.created', pg_temp.session('checked'), pg_temp.t(100))).outcome,
  'ignored', 'an unknown checkout.session type is ignored');

-- a failure inside processing stays retryable. The 'retry' order has no recorded session; an event
-- naming the session of another order makes storing that session id raise (unique violation).
do $$ begin perform pg_temp.checkout('retry-other', 8, 1, pg_temp.t(0), 'cs_test_wh_retry'); end $$;
do $$ begin perform pg_temp.checkout('retry', 8, 2, pg_temp.t(0)); end $$;
create temp table retry_session as
  select jsonb_set(pg_temp.session('retry', 'unpaid'), '{id}', '"cs_test_wh_retry"') as j;
select row_eq($$select outcome, detail from pg_temp.deliver('evt_wh_retry_1', 'checkout.session.expired', (select j from retry_session), 100)$$,
  row('failed'::text, '23505'::text), 'an unexpected error is reported as failed with its SQLSTATE');
select row_eq($$select (e).processed_at, (e).attempts, (e).last_error like '23505: %' from (select pg_temp.evt('evt_wh_retry_1') e) x$$,
  row(null::timestamptz, 1, true), 'the event stays unprocessed, with the attempt and the error recorded');
select row_eq($$select (o).status, (o).stripe_checkout_session_id from (select pg_temp.ord('retry') o) x$$,
  row('pending'::text, null::text), 'the failed attempt left the order untouched');
select is((pg_temp.deliver('evt_wh_retry_1', 'checkout.session.expired', (select j from retry_session), 200)).outcome,
  'failed', 'a redelivery is applied again, not taken for a duplicate');
update public.orders set stripe_checkout_session_id = 'cs_test_wh_retry_moved' where id = pg_temp.oid('retry-other');
select is((pg_temp.deliver('evt_wh_retry_1', 'checkout.session.expired', (select j from retry_session), 300)).outcome,
  'expired', 'once the cause is gone, the redelivery succeeds');
select row_eq($$select (e).processed_at, (e).attempts, (e).last_error from (select pg_temp.evt('evt_wh_retry_1') e) x$$,
  row(pg_temp.t(300), 3, null::text), 'the event is processed after three attempts, its error cleared');
select row_eq($$select (o).status, (o).stripe_checkout_session_id from (select pg_temp.ord('retry') o) x$$,
  row('expired'::text, 'cs_test_wh_retry'::text), 'the order took the session from the event');
select is(pg_temp.taken(8, 300), 1::bigint, 'and released its seats (the other order''s seat remains)');

-- claim_stuck_checkouts, at s0 (2001): leases are 60 s, the stale limit 600 s.
do $$ begin perform pg_temp.checkout('stuck-old', 9, 2, pg_temp.s(0)); end $$;
do $$ begin perform pg_temp.checkout('stuck-recent', 9, 1, pg_temp.s(1000)); end $$;
do $$ begin perform pg_temp.checkout('stuck-done', 9, 1, pg_temp.s(0), 'cs_test_wh_stuck_done'); end $$;
create temp table stuck1 as
  select * from public.claim_stuck_checkouts(600, 100000, 120, pg_temp.s(1300)) where operation_id like 'op-wh-stuck-%';
select results_eq('select operation_id from stuck1', array['op-wh-stuck-old'],
  'only the attempt whose lease expired more than p_stale_seconds ago is returned (not a recent or completed one)');
select row_eq($$select outcome, stripe_idempotency_key, order_id, event_id, currency, amount_total, hold_expires_at,
                       lines, success_url, cancel_url, customer_email, operation_id from stuck1$$,
  (select row('reconcile'::text, (c).stripe_idempotency_key, (c).order_id, (c).event_id, (c).currency, (c).amount_total,
              (c).hold_expires_at, (c).lines, (c).success_url, (c).cancel_url, (c).customer_email, (c).operation_id)
   from pg_temp.claims where name = 'stuck-old'),
  'it is returned for reconciliation with the SAME key and the original order''s parameters');
select is((select lines from stuck1),
  '[{"tier_id":"76000000-0000-4000-8000-000000000009","product_name":"Webhook Gig — Tier 9","unit_amount":1000,"quantity":2}]'::jsonb,
  'with the order''s lines');
select row_eq($$select lease_token is not null and lease_token <> (select (c).lease_token from pg_temp.claims where name = 'stuck-old'),
                       lease_expires_at, attempt from stuck1$$,
  row(true, pg_temp.s(1420), 2), 'with a new lease for p_lease_seconds');
select is((select count(*)::int from public.claim_stuck_checkouts(600, 100000, 120, pg_temp.s(1300)) where operation_id like 'op-wh-stuck-%'), 0,
  'a second call at the same time returns nothing: the new lease is live');
select throws_ok($$select public.record_checkout('op-wh-stuck-old', (select (c).lease_token from pg_temp.claims where name = 'stuck-old'),
                    'cs_test_wh_stuck_old', '{}', pg_temp.s(1600))$$,
  'SI001', null, 'after the new lease expired, the original lease token still cannot record');
create temp table stuck2 as
  select * from public.claim_stuck_checkouts(600, 100000, 120, pg_temp.s(2100)) where operation_id = 'op-wh-stuck-old';
select results_eq('select operation_id, stripe_idempotency_key, attempt from stuck2',
  $$select 'op-wh-stuck-old'::text, (c).stripe_idempotency_key, 3 from pg_temp.claims where name = 'stuck-old'$$,
  'once the reconciler''s lease is stale too, the attempt is returned again with the same key');
select throws_ok($$select public.record_checkout('op-wh-stuck-old', (select lease_token from stuck1), 'cs_test_wh_stuck_old', '{}', pg_temp.s(2110))$$,
  'SI001', null, 'the earlier reconciler''s token is fenced off');
select lives_ok($$select public.record_checkout('op-wh-stuck-old', (select lease_token from stuck2), 'cs_test_wh_stuck_old', '{"sessionId":"cs_test_wh_stuck_old"}', pg_temp.s(2110))$$,
  'the current reconciler records the session');
select is((pg_temp.ord('stuck-old')).stripe_checkout_session_id, 'cs_test_wh_stuck_old', 'on the original order');
select results_eq($$select operation_id from public.claim_stuck_checkouts(0, 100000, 120, pg_temp.s(90000)) where operation_id like 'op-wh-stuck-%'$$,
  array['op-wh-stuck-recent'], 'a recorded attempt is never returned again (only the recent one, now stale)');
select throws_ok('select * from public.claim_stuck_checkouts(-1)', '22023', null, 'bad arguments are rejected');

-- A hold that ran out with no expiry event (expires_at plus the grace for a missed webhook):
-- its seats were resold, so a late payment must not oversell (paid, or unpaid awaiting an
-- async payment).
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order) values
  (pg_temp.tier(10), 'e6000000-0000-4000-8000-000000000001', 'Tier 10', 1000, 4, 10),
  (pg_temp.tier(11), 'e6000000-0000-4000-8000-000000000001', 'Tier 11', 1000, 4, 10);
do $$ begin
  perform pg_temp.checkout('lapsed-paid', 10, 4, pg_temp.t(0), 'cs_test_wh_lapsed_paid');
  perform pg_temp.checkout('lapsed-paid-resold', 10, 4, pg_temp.t(5460), 'cs_test_wh_lapsed_paid_resold');
  perform pg_temp.checkout('lapsed-unpaid', 11, 4, pg_temp.t(0), 'cs_test_wh_lapsed_unpaid');
  perform pg_temp.checkout('lapsed-unpaid-resold', 11, 4, pg_temp.t(5460), 'cs_test_wh_lapsed_unpaid_resold');
end $$;
select is((pg_temp.deliver('evt_wh_lapsed_paid', 'checkout.session.completed', pg_temp.session('lapsed-paid'), 5520)).outcome,
  'capacity_conflict', 'a payment for a lapsed hold whose seats were resold is a capacity conflict');
select is(pg_temp.taken(10, 5520), 4::bigint, 'and the tier is not oversold');
select is((pg_temp.deliver('evt_wh_lapsed_unpaid', 'checkout.session.completed', pg_temp.session('lapsed-unpaid', 'unpaid'), 5520)).outcome,
  'capacity_conflict', 'a delayed payment for a lapsed hold whose seats were resold is a capacity conflict too');
select is(pg_temp.taken(11, 5520), 4::bigint, 'and its hold is not extended over the new buyer''s seats');

-- A payment in the session's last seconds, its webhook a minute late: the seats were not
-- resold in between, because only Stripe's word (or the grace) ends a hold.
insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order) values
  (pg_temp.tier(12), 'e6000000-0000-4000-8000-000000000001', 'Tier 12', 1000, 4, 10);
do $$ begin perform pg_temp.checkout('last-second', 12, 4, pg_temp.t(0), 'cs_test_wh_last_second'); end $$;
select throws_ok($$select pg_temp.checkout('last-second-rival', 12, 1, pg_temp.t(1830))$$, 'CK003', null,
  'just after expires_at, without word from Stripe, the seats are not sold to someone else');
select is((pg_temp.deliver('evt_wh_last_second', 'checkout.session.completed', pg_temp.session('last-second'), 1860)).outcome,
  'paid', 'so the late payment is applied, not a capacity conflict');

select * from finish();
rollback;
