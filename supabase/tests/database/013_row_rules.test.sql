-- Row rules: orders and stripe_idempotency_keys keep their rules in one CHECK each, calling
-- private.order_rules / private.idempotency_key_rules (cheaper than many CHECKs, see
-- 20261128090100_orders.sql). Each rule still rejects the row that breaks it, with
-- check_violation naming that rule, and lets through what a CHECK would (nulls included).
begin;
select plan(35);

-- The rule a statement breaks ('Rule: …' from the error's detail), or what else happened.
create function pg_temp.broken(p_sql text) returns text language plpgsql as $$
declare
  v_state text;
  v_detail text;
begin
  execute p_sql;
  return 'no error';
exception when others then
  get stacked diagnostics v_state = returned_sqlstate, v_detail = pg_exception_detail;
  return v_state || ' ' || coalesce(v_detail, '');
end;
$$;

insert into events.events (id, title, currency, status)
values ('00000000-0000-7000-8000-00000000e013', 'Rules night', 'usd', 'published');
insert into public.orders (id, event_id, guest_email, currency, amount_total, hold_expires_at, seats_held_until)
values ('00000000-0000-7000-8000-0000000a0013', '00000000-0000-7000-8000-00000000e013', 'buyer@example.com',
        'usd', 5000, now() + interval '30 minutes', now() + interval '35 minutes');

create function pg_temp.order_update(p_set text) returns text language sql as $$
  select pg_temp.broken(format('update public.orders set %s where id = %L', p_set,
                               '00000000-0000-7000-8000-0000000a0013'));
$$;

select is(pg_temp.order_update($$guest_email = 'not an address'$$),
  '23514 Rule: guest_email is an address of at most 254 characters.', 'orders: a guest email is an address');
select is(pg_temp.order_update($$guest_email = 'a b@example.com'$$),
  '23514 Rule: guest_email is an address of at most 254 characters.', 'orders: a guest email has no whitespace');
select is(pg_temp.order_update($$guest_email = repeat('a', 250) || '@b.co'$$),
  '23514 Rule: guest_email is an address of at most 254 characters.', 'orders: a guest email has at most 254 characters');
select is(pg_temp.order_update($$guest_name = repeat('n', 201)$$),
  '23514 Rule: guest_name has at most 200 characters.', 'orders: a guest name has at most 200 characters');
select is(pg_temp.order_update($$status = 'shipped'$$),
  '23514 Rule: status is a known order status.', 'orders: the status is a known one');
select is(pg_temp.order_update($$currency = 'USD'$$),
  '23514 Rule: currency is a lowercase ISO code.', 'orders: the currency is a lowercase ISO code');
select is(pg_temp.order_update($$amount_total = -1$$),
  '23514 Rule: amount_total is not negative.', 'orders: the total is not negative');
select is(pg_temp.order_update($$checkout_operation_id = repeat('o', 151)$$),
  '23514 Rule: checkout_operation_id has at most 150 characters.', 'orders: an operation id has at most 150 characters');
select is(pg_temp.order_update($$cancel_url = repeat('u', 2049)$$),
  '23514 Rule: success_url and cancel_url have at most 2048 characters.', 'orders: a return URL has at most 2048 characters');
select is(pg_temp.order_update($$stripe_dispute_id = repeat('d', 256)$$),
  '23514 Rule: Stripe ids have at most 255 characters.', 'orders: a Stripe id has at most 255 characters (dispute)');
select is(pg_temp.order_update($$stripe_payment_intent_id = repeat('p', 256)$$),
  '23514 Rule: Stripe ids have at most 255 characters.', 'orders: a Stripe id has at most 255 characters (PaymentIntent)');
insert into auth.users (id, email) values ('a0000000-0000-4000-8000-000000000013', 'rules-user@example.com');
select is(pg_temp.broken($$insert into public.orders (event_id, user_id, guest_email, currency, amount_total, hold_expires_at, seats_held_until)
    values ('00000000-0000-7000-8000-00000000e013', 'a0000000-0000-4000-8000-000000000013', 'both@example.com',
            'usd', 1, now(), now())$$),
  '23514 Rule: a user or a guest email, not both.', 'orders: a buyer is a user or a guest, not both');
select is(pg_temp.order_update($$paid_at = now()$$),
  '23514 Rule: paid_at is set exactly when the order was paid.', 'orders: a pending order has no paid_at');
select is(pg_temp.order_update($$status = 'paid'$$),
  '23514 Rule: paid_at is set exactly when the order was paid.', 'orders: a paid order has its paid_at');
select is(pg_temp.order_update($$amount_refunded = 5001$$),
  '23514 Rule: amount_refunded is between 0 and amount_total.', 'orders: no more is refunded than was paid');
select is(pg_temp.order_update($$status = 'paid', paid_at = now(), amount_refunded = 100$$),
  '23514 Rule: a paid order has no refund.', 'orders: a paid order has no refund');
select is(pg_temp.order_update($$status = 'partially_refunded', paid_at = now(), amount_refunded = 5000$$),
  '23514 Rule: a partially refunded order has part of its amount back.', 'orders: partially refunded is part of the amount');
select is(pg_temp.order_update($$status = 'refunded', paid_at = now(), amount_refunded = 4999$$),
  '23514 Rule: a refunded order has all of its amount back.', 'orders: refunded is all of the amount');
select is(pg_temp.order_update($$amount_refunded = 1$$),
  '23514 Rule: an unpaid order has no refund.', 'orders: an unpaid order has no refund');
select is(pg_temp.order_update($$seats_held_until = hold_expires_at - interval '1 second'$$),
  '23514 Rule: seats_held_until is not before hold_expires_at.', 'orders: the seats are held at least until the session ends');
select is(pg_temp.order_update($$status = 'partially_refunded', paid_at = now(), amount_refunded = 4999,
                                  guest_name = null, checkout_operation_id = null, success_url = null,
                                  stripe_dispute_id = repeat('d', 255)$$),
  'no error', 'orders: what the rules allow passes, absent optional columns included');
select is((select status from public.orders where id = '00000000-0000-7000-8000-0000000a0013'),
  'partially_refunded', 'orders: the allowed update was applied');

-- stripe_idempotency_keys: one valid in-flight row, then each rule broken.
insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key,
                                            request_fingerprint, lease_token, lease_expires_at)
values ('checkout:create', 'rules-op', 'checkout:create:rules-op:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69',
        repeat('a', 64), gen_random_uuid(), now() + interval '30 seconds');

create function pg_temp.key_update(p_set text) returns text language sql as $$
  select pg_temp.broken(format('update public.stripe_idempotency_keys set %s where operation_id = %L', p_set, 'rules-op'));
$$;

select is(pg_temp.key_update($$operation_type = 'checkout', stripe_idempotency_key = 'checkout:rules-op:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69'$$),
  '23514 Rule: operation_type_format: resource:verb, at most 64 characters.', 'keys: the operation type is resource:verb');
select is(pg_temp.key_update($$operation_id = 'rules op', stripe_idempotency_key = 'checkout:create:rules op:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69'$$),
  '23514 Rule: operation_id_format: 1 to 150 of A-Z a-z 0-9 _ . -.', 'keys: the operation id has safe characters');
select is(pg_temp.key_update($$stripe_idempotency_key = 'checkout:create:rules-op:not-a-uuid-not-a-uuid-not-a-uuid-xx'$$),
  '23514 Rule: key_shape: operation_type:operation_id:uuid, at most 255 characters.', 'keys: the Stripe key ends with a uuid');
select is(pg_temp.key_update($$request_fingerprint = repeat('A', 64)$$),
  '23514 Rule: fingerprint_format: a sha256 hex digest.', 'keys: the fingerprint is a sha256 hex digest');
select is(pg_temp.key_update($$status = 'done'$$),
  '23514 Rule: status: in_progress, completed or failed.', 'keys: the status is a known one');
select is(pg_temp.key_update($$attempt = 0$$),
  '23514 Rule: attempt is at least 1, reconcile_attempts at least 0.', 'keys: attempts start at 1');
select is(pg_temp.key_update($$reconcile_attempts = -1$$),
  '23514 Rule: attempt is at least 1, reconcile_attempts at least 0.', 'keys: reconcile attempts are not negative');
select is(pg_temp.key_update($$stripe_resource_id = repeat('r', 256)$$),
  '23514 Rule: stripe_resource_id has at most 255 characters.', 'keys: a Stripe resource id has at most 255 characters');
select is(pg_temp.key_update($$response_status = 99$$),
  '23514 Rule: response_status is an HTTP status.', 'keys: a stored status is an HTTP status');
select is(pg_temp.key_update($$metadata = '[]'::jsonb$$),
  '23514 Rule: metadata is a JSON object.', 'keys: metadata is an object');
select is(pg_temp.key_update($$lease_token = null$$),
  '23514 Rule: in_progress_has_lease.', 'keys: an attempt in flight has a lease');
select is(pg_temp.key_update($$status = 'completed', response_status = 201$$),
  '23514 Rule: completed_has_response.', 'keys: a completed operation has its response');
select is(pg_temp.key_update($$status = 'completed', response_status = 201, response_body = '{}'::jsonb,
                                lease_token = null, lease_expires_at = null, stripe_resource_id = null$$),
  'no error', 'keys: what the rules allow passes');

select * from finish();
rollback;
