-- Structure: the tables, columns and functions that other parts of the platform rely on by name.
begin;
select plan(38);

select has_schema('events');
select has_table('events', 'events', 'events.events exists');
select has_table('events', 'ticket_tiers', 'events.ticket_tiers exists');
select has_table('public', 'orders', 'orders exists');
select has_table('public', 'order_items', 'order_items exist');
select has_table('public', 'stripe_webhook_events', 'stripe_webhook_events exists');
select has_table('public', 'stripe_idempotency_keys', 'stripe_idempotency_keys exists');

select columns_are('events', 'events',
  array['id', 'title', 'currency', 'status', 'starts_at', 'idempotency_key', 'cancelled_at',
        'cancellation_reason', 'created_at', 'updated_at'],
  'events.events has the contracted columns');
select col_is_unique('events', 'events', 'idempotency_key', 'event creation is idempotent by key');
select col_default_is('events', 'events', 'currency', 'usd', 'currency defaults to usd');
select col_default_is('events', 'events', 'status', 'draft', 'events start as drafts');

select has_column('events', 'ticket_tiers', 'unit_amount', 'tiers carry a price in minor units');
select has_column('events', 'ticket_tiers', 'capacity', 'tiers carry a capacity');
select col_default_is('events', 'ticket_tiers', 'max_per_order', '10', 'max_per_order defaults to 10');
select fk_ok('events', 'ticket_tiers', 'event_id', 'events', 'events', 'id');

select columns_are('public', 'stripe_idempotency_keys', array[
  'id', 'operation_type', 'operation_id', 'stripe_idempotency_key', 'request_fingerprint', 'status',
  'lease_token', 'lease_expires_at', 'attempt', 'reconcile_attempts', 'stripe_resource_id', 'response_status',
  'response_body', 'order_id', 'metadata', 'last_error', 'created_at', 'updated_at', 'expires_at'
], 'stripe_idempotency_keys has the contracted columns');
select col_is_unique('public', 'stripe_idempotency_keys', array['operation_type', 'operation_id'],
  'one row per logical operation');
select col_is_unique('public', 'stripe_idempotency_keys', 'stripe_idempotency_key',
  'a Stripe key belongs to one operation');
select col_type_is('public', 'stripe_idempotency_keys', 'metadata', 'jsonb', 'metadata is jsonb');
select col_type_is('public', 'stripe_idempotency_keys', 'response_body', 'jsonb', 'the response is stored as jsonb');
select col_not_null('public', 'stripe_idempotency_keys', 'expires_at', 'every row expires');

select col_is_unique('public', 'stripe_webhook_events', 'stripe_event_id', 'one row per Stripe event id');
-- Unique where set (a claim's new order has neither yet, and adds no entry for a null).
select index_is_unique('public', 'orders', 'orders_stripe_checkout_session_id_key', 'a session belongs to one order');
select index_is_unique('public', 'orders', 'orders_stripe_payment_intent_id_key', 'a PaymentIntent belongs to one order');

-- Every table has RLS on.
select is(
  (select count(*)::int from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname in ('public', 'events', 'private') and c.relkind = 'r' and not c.relrowsecurity),
  0, 'RLS is enabled on every table');

select function_returns('public', 'claim_stripe_idempotency',
  array['text', 'text', 'text', 'text', 'uuid', 'integer', 'jsonb', 'timestamp with time zone', 'uuid'],
  'stripe_idempotency_claim');
select function_returns('public', 'check_stripe_idempotency', array['text', 'text'], 'setof record');
select function_returns('public', 'record_stripe_idempotency',
  array['text', 'text', 'uuid', 'text', 'integer', 'jsonb', 'jsonb', 'timestamp with time zone'],
  'stripe_idempotency_keys');
select function_returns('public', 'release_stripe_idempotency',
  array['text', 'text', 'uuid', 'boolean', 'text', 'timestamp with time zone'], 'text');
select function_returns('public', 'cleanup_expired_idempotency_keys',
  array['integer', 'timestamp with time zone'], 'bigint');

-- Every function of ours pins its search_path to '' (no search_path hijacking).
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
   join pg_namespace n on n.oid = p.pronamespace
   where n.nspname in ('public', 'events', 'private')
     and p.prokind = 'f'
     and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
     and coalesce(array_to_string(p.proconfig, ','), '') not like '%search_path=""%'),
  null, 'every function sets search_path = ''''');

-- Time-dependent functions let tests move the clock.
select ok(
  (select bool_and(p.proargnames @> array['p_now']) from pg_proc p
   join pg_namespace n on n.oid = p.pronamespace
   where n.nspname in ('public', 'private') and p.proname in (
     'claim_stripe_idempotency', 'record_stripe_idempotency', 'release_stripe_idempotency',
     'cleanup_expired_idempotency_keys', 'tier_seats_taken', 'tier_seats_recounted',
     'check_tier_capacity', 'repair_tier_capacity', 'release_lapsed_seat_holds')),
  'time-dependent functions take p_now');

select col_default_is('public', 'stripe_idempotency_keys', 'status', 'in_progress',
  'a new operation starts in progress');
select is(
  (select pg_get_expr(d.adbin, d.adrelid) from pg_attrdef d
   join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
   where d.adrelid = 'public.stripe_idempotency_keys'::regclass and a.attname = 'expires_at'),
  '(now() + ''24:00:00''::interval)', 'rows expire 24 hours after creation by default');

select has_index('public', 'stripe_idempotency_keys', 'stripe_idempotency_keys_expires_at_idx',
  'cleanup walks an index on expires_at');

-- The key shape is enforced by the table itself.
select throws_ok(
  $$insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, request_fingerprint, lease_token, lease_expires_at)
    values ('checkout:create', 'op-1234567890abcdef', 'checkout:create:other-operation:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid(), now())$$,
  '23514', null, 'a key that does not name its own operation is rejected');
select throws_ok(
  $$insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, request_fingerprint, lease_token, lease_expires_at)
    values ('Checkout', 'op-1234567890abcdef', 'Checkout:op-1234567890abcdef:9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid(), now())$$,
  '23514', null, 'an operation type that is not resource:verb is rejected');
select throws_ok(
  format($$insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, request_fingerprint, lease_token, lease_expires_at)
    values ('checkout:create', %1$L, 'checkout:create:' || %1$L || ':9b2f3b8e-8f6e-4c1e-9a3e-1f2d3c4b5a69', repeat('a', 64), gen_random_uuid(), now())$$,
    repeat('x', 150) || repeat('y', 60)),
  '23514', null, 'keys are capped at 255 characters');

select * from finish();
rollback;
