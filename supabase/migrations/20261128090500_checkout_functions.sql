-- Checkout on top of the idempotency protocol: the claim also creates the order and its
-- capacity hold in the same transaction; the record also stores the session on the order.
-- Objects: type public.checkout_claim; functions claim_checkout, record_checkout,
--          release_checkout; in private: checkout_request, checkout_operation, checkout_line,
--          create_checkout_order, checkout_claim_order, checkout_operation_payment, refuse_if_paid,
--          enforce_pending_hold_limits, renew_checkout_operation, resume_takeover, answer_replay.
-- Risks:   prices and names come only from events.ticket_tiers. Any rejection raises, so a
--          rejected checkout writes nothing. The database's clock never decides that a session
--          ended: past its expires_at, a retry is told to ask Stripe (outcome verify), and a new
--          session is opened only once Stripe's answer is stored on the order.
-- Lock order (every function that acts on a Stripe object, in every migration): the
--          idempotency row → the order → the tiers, in id order. Advisory locks of the
--          hold-flooding limits come after the idempotency row and before the tiers. Keeping
--          one order is what keeps a webhook, a retry and reconciliation from deadlocking.
-- Errors:  CK001 event not found or not on sale; CK002 tier not in the event; CK003 sold out;
--          CK004 quantity above the tier's max_per_order; CK005 outside the tier's sales window;
--          CK006 too many pending checkouts for this buyer or address; CK007 the operation
--          already has a paid (or paying) order; CK008 the event is cancelled; 22023 bad argument.

create type public.checkout_claim as (
  -- created | takeover | retry | renew: call Stripe with stripe_idempotency_key, then record.
  -- replay: answer response_status/response_body. verify: the session is past its expires_at
  -- and Stripe has not said how it ended: ask Stripe (stripe_session_id), store its answer,
  -- claim again. conflict | mismatch | paid: refuse. reconcile: claim_stuck_checkouts' own.
  outcome text,
  stripe_idempotency_key text,
  lease_token uuid,
  lease_expires_at timestamptz,
  attempt integer,
  response_status integer,
  response_body jsonb,
  order_id uuid,
  event_id uuid,
  currency text,
  amount_total integer,
  hold_expires_at timestamptz,
  -- [{tier_id, product_name, unit_amount, quantity}] ordered by tier_id: the Stripe line items.
  lines jsonb,
  success_url text,
  cancel_url text,
  -- The guest's email (Stripe's customer_email); null for signed-in buyers.
  customer_email text,
  operation_id text,
  -- The order's Checkout Session, when it has one (verify asks Stripe about it).
  stripe_session_id text,
  -- Reconciliation runs that took this attempt over so far, this one included.
  reconcile_attempts integer
);
comment on type public.checkout_claim is 'What claim_checkout decided, with the order that the Stripe call must describe.';

-- The operation type of a checkout, written once.
create or replace function private.checkout_operation()
returns text
language plpgsql immutable set search_path = ''
as $$ begin return 'checkout:create'; end; $$;

-- What a checkout asks for, as claim_checkout received it (the internals take it whole).
create type private.checkout_request as (
  operation_id text,
  event_id uuid,
  items jsonb,
  user_id uuid,
  guest_email text,
  guest_name text,
  success_url text,
  cancel_url text,
  client_address inet,
  hold_expires_at timestamptz,
  seats_held_until timestamptz,
  now timestamptz
);

-- One Stripe line item of a claim (checkout_claim.lines), as both a new order's claim and
-- checkout_claim_order write it.
create or replace function private.checkout_line(
  p_tier_id uuid,
  p_product_name text,
  p_unit_amount integer,
  p_quantity integer
)
returns jsonb
language plpgsql immutable set search_path = ''
as $$
begin
  return jsonb_build_object('tier_id', p_tier_id, 'product_name', p_product_name,
                            'unit_amount', p_unit_amount, 'quantity', p_quantity);
end;
$$;

-- Creates a pending order holding seats, after checking the event, the tiers and capacity. The
-- tiers are read once (not locked) from the catalogue, in id order, and their rules checked; the
-- order is written whole (priced from them); then each tier's room is taken in id order
-- (take_tier_room: the order's shard of the tier locked, with room for its seats, by the
-- update that adds them as held; allotment moved to it from the tier's other shards if it had
-- none; no room in the whole tier: CK003, which undoes it all), and the lines and their holds
-- are inserted in one statement each (counted here, not by the counting trigger, see below).
-- So a hot tier's lock is held only for its count, the items and the commit, and concurrent
-- checkouts of overlapping tiers queue, never deadlock. Returns p_claim with the order's part
-- filled from what it wrote (what checkout_claim_order would read back, without reading it
-- back).
create or replace function private.create_checkout_order(
  p_order_id uuid,
  p_request private.checkout_request,
  p_claim public.checkout_claim
)
returns public.checkout_claim
language plpgsql volatile set search_path = ''
as $$
declare
  r private.checkout_request := p_request;
  v_claim public.checkout_claim := p_claim;
  v_event events.events;
  v_item record;
  v_requested int;
  v_found int := 0;
  v_amount bigint := 0;
  -- The lines, in tier id order: what the tiers said when they were read.
  v_tier_ids uuid[];
  v_names text[];
  v_quantities int[];
  v_prices int[];
  v_shards int[]; -- each tier's shard that take_tier_room locked for this order
  v_mark text; -- set_config's answer (an assignment: PERFORM would run a query through SPI)
begin
  if num_nonnulls(r.user_id, r.guest_email) <> 1 then
    raise exception using errcode = '22023',
      message = 'Cannot create checkout: the buyer is either a user or a guest email';
  end if;
  if jsonb_typeof(r.items) is distinct from 'array' or jsonb_array_length(r.items) not between 1 and 20 then
    raise exception using errcode = '22023', message = 'Cannot create checkout: 1 to 20 items are required';
  end if;

  select e.* into v_event from events.events e where e.id = r.event_id;
  if v_event.status = 'cancelled' then
    raise exception using errcode = 'CK008',
      message = 'Cannot create checkout: the event is cancelled', detail = r.event_id::text;
  end if;
  if not found or v_event.status <> 'published' then
    raise exception using errcode = 'CK001',
      message = 'Cannot create checkout: event not found or not on sale', detail = r.event_id::text;
  end if;

  select count(distinct (x ->> 'tierId')::uuid) into v_requested from jsonb_array_elements(r.items) x;
  if v_requested <> jsonb_array_length(r.items) then
    raise exception using errcode = '22023', message = 'Cannot create checkout: a tier is repeated';
  end if;

  for v_item in
    select t.*, (x ->> 'quantity')::int as quantity
    from jsonb_array_elements(r.items) x
    join events.ticket_tiers t on t.id = (x ->> 'tierId')::uuid and t.event_id = v_event.id
    order by t.id
  loop
    v_found := v_found + 1;
    if v_item.quantity is null or v_item.quantity < 1 or v_item.quantity > v_item.max_per_order then
      raise exception using errcode = 'CK004',
        message = format('Cannot create checkout: at most %s tickets of tier %s per order', v_item.max_per_order, v_item.name),
        detail = v_item.id::text;
    end if;
    if (v_item.sales_start_at is not null and r.now < v_item.sales_start_at)
       or (v_item.sales_end_at is not null and r.now >= v_item.sales_end_at) then
      raise exception using errcode = 'CK005',
        message = format('Cannot create checkout: tier %s is not on sale now', v_item.name), detail = v_item.id::text;
    end if;
    v_amount := v_amount + v_item.quantity::bigint * v_item.unit_amount;
    v_tier_ids[v_found] := v_item.id;
    v_names[v_found] := v_item.name;
    v_quantities[v_found] := v_item.quantity;
    v_prices[v_found] := v_item.unit_amount;
  end loop;
  if v_found <> v_requested then
    raise exception using errcode = 'CK002', message = 'Cannot create checkout: a tier does not belong to this event';
  end if;

  insert into public.orders as o (id, event_id, user_id, guest_email, guest_name, success_url, cancel_url,
                                  checkout_operation_id, client_address, status, currency, amount_total,
                                  hold_expires_at, seats_held_until, created_at, updated_at)
  values (p_order_id, r.event_id, r.user_id, r.guest_email, r.guest_name, r.success_url, r.cancel_url,
          r.operation_id, r.client_address, 'pending', v_event.currency, v_amount, r.hold_expires_at,
          r.seats_held_until, r.now, r.now)
  returning o.id, o.event_id, o.currency, o.amount_total, o.hold_expires_at, o.success_url, o.cancel_url,
            o.guest_email, o.stripe_checkout_session_id
  into v_claim.order_id, v_claim.event_id, v_claim.currency, v_claim.amount_total, v_claim.hold_expires_at,
       v_claim.success_url, v_claim.cancel_url, v_claim.customer_email, v_claim.stripe_session_id;

  for i in 1 .. v_found loop
    v_shards[i] := private.take_tier_room(v_tier_ids[i], p_order_id, v_quantities[i], r.now, v_quantities[i]);
    if v_shards[i] is null then
      raise exception using errcode = 'CK003',
        message = format('Cannot create checkout: tier %s is sold out', v_names[i]),
        detail = v_tier_ids[i]::text;
    end if;
  end loop;
  -- The claim counts its own seats (take_tier_room added them to the shards it holds; the hold
  -- rows follow): what count_new_order_items would do for a pending order, without its trigger
  -- and the transition table it reads (a seventh of a claim). The trigger skips only a
  -- statement of the transaction that set this mark to its own id, and the mark is cleared
  -- right after; every other writer's items are counted by it.
  v_mark := set_config('private.items_counted_by', pg_current_xact_id()::text, true);
  -- The lines as checkout_claim_order builds them, from the rows as inserted.
  with items as (
    insert into public.order_items (order_id, tier_id, shard, product_name, quantity, unit_amount)
    select p_order_id, l.tier_id, l.shard, v_event.title || ' — ' || l.name, l.quantity, l.unit_amount
    from unnest(v_tier_ids, v_shards, v_names, v_quantities, v_prices)
      as l (tier_id, shard, name, quantity, unit_amount)
    order by l.tier_id
    returning tier_id, product_name, unit_amount, quantity)
  select jsonb_agg(private.checkout_line(i.tier_id, i.product_name, i.unit_amount, i.quantity)
                   order by i.tier_id)
  into v_claim.lines
  from items i;
  v_mark := set_config('private.items_counted_by', '', true);
  insert into private.seat_holds (order_id, tier_id, quantity, held_until, shard)
  select p_order_id, l.tier_id, l.quantity, r.seats_held_until, l.shard
  from unnest(v_tier_ids, v_shards, v_quantities) as l (tier_id, shard, quantity);
  return v_claim;
end;
$$;
comment on function private.create_checkout_order(uuid, private.checkout_request, public.checkout_claim) is
  'Internal to claim_checkout: a pending order priced from the tiers, holding seats (each tier''s shard locked, in tier id order), and the claim filled for it; or an error.';

-- Fills the order part of a checkout_claim. (PL/pgSQL, like every helper on a claim's path: a
-- SQL function with a pinned search_path is planned again on every call.)
create or replace function private.checkout_claim_order(p_claim public.checkout_claim, p_order_id uuid)
returns public.checkout_claim
language plpgsql stable set search_path = ''
as $$
begin
  return (
  select (p_claim.outcome, p_claim.stripe_idempotency_key, p_claim.lease_token, p_claim.lease_expires_at,
          p_claim.attempt, p_claim.response_status, p_claim.response_body, o.id, o.event_id, o.currency,
          o.amount_total, o.hold_expires_at,
          (select jsonb_agg(private.checkout_line(i.tier_id, i.product_name, i.unit_amount, i.quantity)
                            order by i.tier_id)
           from public.order_items i where i.order_id = o.id),
          o.success_url, o.cancel_url, o.guest_email, p_claim.operation_id, o.stripe_checkout_session_id,
          p_claim.reconcile_attempts)::public.checkout_claim
  from public.orders o
  where o.id = p_order_id);
end;
$$;

-- A checkout_claim for an attempt (fields of the order filled later by checkout_claim_order).
create or replace function private.checkout_claim_of(
  p_outcome text,
  p_operation_id text,
  p_stripe_idempotency_key text,
  p_lease_token uuid,
  p_lease_expires_at timestamptz,
  p_attempt integer,
  p_reconcile_attempts integer default null
)
returns public.checkout_claim
language plpgsql immutable set search_path = ''
as $$
begin
  return row(p_outcome, p_stripe_idempotency_key, p_lease_token, p_lease_expires_at, p_attempt,
             null, null, null, null, null, null, null, null, null, null, null, p_operation_id, null,
             p_reconcile_attempts)::public.checkout_claim;
end;
$$;

-- The operation's order that Stripe said was paid, or whose payment is under way (a delayed
-- payment method), if any. While one exists, no new session may be opened for the operation.
create or replace function private.checkout_operation_payment(p_operation_id text)
returns uuid
language plpgsql stable set search_path = ''
as $$
begin
  return (
    select o.id from public.orders o
    where o.checkout_operation_id = p_operation_id
      and (o.paid_at is not null or (o.status = 'pending' and o.session_completed_at is not null))
    order by o.created_at
    limit 1);
end;
$$;

-- CK007 when the operation already has a paid (or paying) order. Raising also undoes whatever
-- the claim wrote before (a new row, a new key).
create or replace function private.refuse_if_paid(p_operation_id text)
returns void
language plpgsql stable set search_path = ''
as $$
begin
  if private.checkout_operation_payment(p_operation_id) is not null then
    raise exception using errcode = 'CK007',
      message = 'Cannot create checkout: this order is already paid', detail = p_operation_id;
  end if;
end;
$$;

-- Hold flooding: one buyer and one client address may each hold at most so many pending
-- checkouts created within the window; beyond that CK006, whose DETAIL is the number of seconds
-- until a slot frees (Retry-After). A signed-in buyer is their user id; a guest is the pair
-- (email, client address), because anyone can type an email: holds made with a victim's email
-- from one address never block the victim elsewhere. A guest whose address is unknown counts
-- with the other holds of that email with no address (not with all of the email's holds, which
-- would let a stranger lock it out again). Advisory locks per buyer and per address make the
-- count and the insert that follows atomic against concurrent checkouts of the same client
-- (buyer lock first, then address: one order everywhere, no deadlock).
create or replace function private.enforce_pending_hold_limits(
  p_user_id uuid,
  p_guest_email text,
  p_client_address inet,
  p_max_per_buyer integer,
  p_max_per_address integer,
  p_window_seconds integer,
  p_now timestamptz
)
returns void
language plpgsql volatile set search_path = ''
as $$
declare
  v_since timestamptz := p_now - make_interval(secs => coalesce(p_window_seconds, 1800));
  v_count integer;
  v_frees timestamptz;
begin
  if p_max_per_buyer is not null and num_nonnulls(p_user_id, p_guest_email) = 1 then
    -- Keyed on the buyer tuple; an email has no whitespace, so email || ' ' || address is unambiguous.
    perform pg_advisory_xact_lock(hashtextextended('checkout-buyer:' ||
      coalesce(p_user_id::text, p_guest_email || ' ' || coalesce(host(p_client_address), '')), 0));
    -- One branch per kind of buyer, so that each is a plain equality on its index.
    if p_user_id is not null then
      select count(*), min(least(o.hold_expires_at, o.created_at + make_interval(secs => coalesce(p_window_seconds, 1800))))
      into v_count, v_frees
      from public.orders o
      where o.status = 'pending' and o.created_at > v_since and o.hold_expires_at > p_now
        and o.user_id = p_user_id;
    elsif p_client_address is not null then
      select count(*), min(least(o.hold_expires_at, o.created_at + make_interval(secs => coalesce(p_window_seconds, 1800))))
      into v_count, v_frees
      from public.orders o
      where o.status = 'pending' and o.created_at > v_since and o.hold_expires_at > p_now
        and o.guest_email = p_guest_email and o.client_address = p_client_address;
    else
      select count(*), min(least(o.hold_expires_at, o.created_at + make_interval(secs => coalesce(p_window_seconds, 1800))))
      into v_count, v_frees
      from public.orders o
      where o.status = 'pending' and o.created_at > v_since and o.hold_expires_at > p_now
        and o.guest_email = p_guest_email and o.client_address is null;
    end if;
    if v_count >= p_max_per_buyer then
      raise exception using errcode = 'CK006',
        message = format('Cannot create checkout: this buyer already has %s pending checkouts', v_count),
        detail = greatest(1, ceil(extract(epoch from v_frees - p_now)))::text;
    end if;
  end if;
  if p_max_per_address is not null and p_client_address is not null then
    perform pg_advisory_xact_lock(hashtextextended('checkout-address:' || host(p_client_address), 0));
    select count(*), min(least(o.hold_expires_at, o.created_at + make_interval(secs => coalesce(p_window_seconds, 1800))))
    into v_count, v_frees
    from public.orders o
    where o.status = 'pending' and o.created_at > v_since and o.hold_expires_at > p_now
      and o.client_address = p_client_address;
    if v_count >= p_max_per_address then
      raise exception using errcode = 'CK006',
        message = format('Cannot create checkout: this address already has %s pending checkouts', v_count),
        detail = greatest(1, ceil(extract(epoch from v_frees - p_now)))::text;
    end if;
  end if;
end;
$$;
comment on function private.enforce_pending_hold_limits(uuid, text, inet, integer, integer, integer, timestamptz) is
  'Internal to claim_checkout: CK006 when a buyer (user id, or guest email and address) or an address holds too many pending checkouts.';

-- The renew branch of claim_checkout: the operation's session ended, so it is re-armed with the
-- caller's new key for a fresh session. Under the locks (operation, then order) it checks what
-- a plain read could not: nobody renewed it meanwhile (else conflict), Stripe's word about the
-- old session is stored (else verify), and no order of the operation is paid (else paid).
create or replace function private.renew_checkout_operation(
  p_operation_id text,
  p_old_order_id uuid,
  p_stripe_idempotency_key text,
  p_lease_token uuid,
  p_lease_seconds integer,
  p_now timestamptz
)
returns public.checkout_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_result public.checkout_claim;
  v_row_id bigint;
  v_order public.orders;
  v_paid uuid;
  v_armed public.stripe_idempotency_keys;
begin
  v_result.operation_id := p_operation_id;
  select k.id into v_row_id from public.stripe_idempotency_keys k
  where k.operation_type = private.checkout_operation() and k.operation_id = p_operation_id
    and k.status = 'completed' and k.order_id = p_old_order_id
  for update;
  if not found then
    v_result.outcome := 'conflict';
    v_result.lease_expires_at := p_now + interval '1 second';
    return v_result;
  end if;

  select o.* into v_order from public.orders o where o.id = p_old_order_id for update;
  if v_order.status = 'pending' then
    v_result.outcome := 'verify';
    return private.checkout_claim_order(v_result, v_order.id);
  end if;
  v_paid := private.checkout_operation_payment(p_operation_id);
  if v_paid is not null then
    v_result.outcome := 'paid';
    return private.checkout_claim_order(v_result, v_paid);
  end if;

  v_armed := private.arm_stripe_idempotency_attempt(v_row_id, p_stripe_idempotency_key, p_lease_token,
    p_now + make_interval(secs => p_lease_seconds), p_now);
  return private.checkout_claim_of('renew', p_operation_id, v_armed.stripe_idempotency_key,
    v_armed.lease_token, v_armed.lease_expires_at, v_armed.attempt);
end;
$$;
comment on function private.renew_checkout_operation(text, uuid, text, uuid, integer, timestamptz) is
  'Internal to claim_checkout: re-arms an operation whose session Stripe ended: renew | verify | paid | conflict.';

-- The takeover branch of claim_checkout: the previous attempt died, so the same key and order
-- go to Stripe again, unless the order's expires_at is now too close for Stripe's 30-minute
-- floor. Then the dead attempt's order is cancelled (it answered nobody, so nobody holds a link
-- to a session it may have made) and the operation is armed afresh (outcome renew).
create or replace function private.resume_takeover(
  p_claim public.checkout_claim,
  p_order_id uuid,
  p_stripe_idempotency_key text,
  p_now timestamptz
)
returns public.checkout_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_result public.checkout_claim := p_claim;
  v_order public.orders;
  v_armed public.stripe_idempotency_keys;
begin
  select o.* into v_order from public.orders o where o.id = p_order_id for update;
  -- A cancelled event opens no session, not even the one a dead attempt may not have made:
  -- reconciliation settles that attempt, and the cancellation expires what it made.
  if exists (select 1 from events.events e where e.id = v_order.event_id and e.status = 'cancelled') then
    raise exception using errcode = 'CK008',
      message = 'Cannot create checkout: the event is cancelled', detail = v_order.event_id::text;
  end if;
  -- Ten seconds of margin for the call itself.
  if v_order.hold_expires_at >= p_now + interval '30 minutes 10 seconds' then
    return private.checkout_claim_order(v_result, p_order_id);
  end if;
  -- The new order's seats go on other shards than the old one's: take every shard of its tiers
  -- first, in tier then shard order, so that cancelling the old order and holding the new one
  -- never take shards out of that order (which could deadlock with a claim at sell-out).
  perform private.lock_tier_capacity(i.tier_id)
  from public.order_items i where i.order_id = p_order_id order by i.tier_id;
  update public.orders o set status = 'cancelled' where o.id = p_order_id and o.status = 'pending';
  v_armed := private.arm_stripe_idempotency_attempt(
    (select k.id from public.stripe_idempotency_keys k
     where k.operation_type = private.checkout_operation() and k.operation_id = p_claim.operation_id),
    p_stripe_idempotency_key, p_claim.lease_token, p_claim.lease_expires_at, p_now);
  v_result.outcome := 'renew';
  v_result.stripe_idempotency_key := v_armed.stripe_idempotency_key;
  v_result.attempt := v_armed.attempt;
  return v_result;
end;
$$;
comment on function private.resume_takeover(public.checkout_claim, uuid, text, timestamptz) is
  'Internal to claim_checkout: takeover with the same key and order, or renew when Stripe would refuse them.';

-- The replay branch of claim_checkout: a completed operation. Its session may be live (the
-- stored response), paid, past its expires_at without word from Stripe (verify), or ended by
-- Stripe (renew, under the locks).
create or replace function private.answer_replay(
  p_claim public.checkout_claim,
  p_stored public.stripe_idempotency_claim,
  p_stripe_idempotency_key text,
  p_lease_token uuid,
  p_lease_seconds integer,
  p_now timestamptz
)
returns public.checkout_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_result public.checkout_claim := p_claim;
  v_order public.orders;
begin
  -- A plain read first: a replay of a live session must not lock or write anything.
  select o.* into v_order from public.orders o where o.id = p_stored.order_id;
  if v_order.paid_at is not null then
    v_result.outcome := 'paid';
    return private.checkout_claim_order(v_result, v_order.id);
  end if;
  if v_order.status = 'pending' and v_order.hold_expires_at > p_now then
    -- The stored response is the whole answer: no need to gather the order's lines. (The same
    -- test as claim_checkout's first read; here for a row that changed since that read.)
    v_result.response_status := p_stored.response_status;
    v_result.response_body := p_stored.response_body;
    v_result.order_id := v_order.id;
    v_result.event_id := v_order.event_id;
    return v_result;
  end if;
  if v_order.status = 'pending' then
    -- Past expires_at, but only Stripe knows whether it was paid in its last seconds.
    v_result.outcome := 'verify';
    v_result.stripe_idempotency_key := null;
    return private.checkout_claim_order(v_result, v_order.id);
  end if;
  return private.renew_checkout_operation(p_claim.operation_id, v_order.id, p_stripe_idempotency_key,
    p_lease_token, p_lease_seconds, p_now);
end;
$$;
comment on function private.answer_replay(public.checkout_claim, public.stripe_idempotency_claim, text, uuid, integer, timestamptz) is
  'Internal to claim_checkout: replay | paid | verify | renew | conflict for a completed operation.';

create or replace function public.claim_checkout(
  p_operation_id text,
  p_stripe_idempotency_key text,
  p_request_fingerprint text,
  p_lease_token uuid,
  p_event_id uuid,
  p_items jsonb,
  p_user_id uuid default null,
  p_guest_email text default null,
  p_guest_name text default null,
  p_success_url text default null,
  p_cancel_url text default null,
  p_hold_seconds integer default 1920,
  p_lease_seconds integer default 60,
  p_now timestamptz default now(),
  -- Hold-flooding limits (null = no limit); they apply to new operations only, never to a
  -- replay or a retry of an existing one. Appended last to keep earlier positions stable.
  p_client_address inet default null,
  p_max_pending_per_buyer integer default null,
  p_max_pending_per_address integer default null,
  p_pending_window_seconds integer default 1800,
  -- How long after expires_at a pending order's seats still count when no word came from Stripe.
  p_hold_grace_seconds integer default 3600,
  -- The longest the claim waits for any lock (a hot tier's counter, the operation's row), in ms.
  p_lock_timeout_ms integer default null
)
returns public.checkout_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_claim public.stripe_idempotency_claim;
  v_result public.checkout_claim;
  v_request private.checkout_request;
  v_order_id uuid;
begin
  if p_lock_timeout_ms not between 1 and 600000 then
    raise exception using errcode = '22023', message = format(
      'Cannot claim checkout: lock timeout of %s ms is outside 1..600000', p_lock_timeout_ms);
  end if;
  if p_hold_seconds is null or p_hold_seconds not between 60 and 86400
     or p_hold_grace_seconds is null or p_hold_grace_seconds not between 0 and 86400 then
    raise exception using errcode = '22023', message = format(
      'Cannot claim checkout: hold of %s seconds (grace %s) is outside 60..86400 (0..86400)',
      p_hold_seconds, p_hold_grace_seconds);
  end if;

  -- The replay of a live session, the answer to a retry storm, in one plain read: no lock, no
  -- write, no nested call. Exactly answer_replay's first answer (completed, same fingerprint,
  -- the order pending and before its expires_at); whatever else the row says, and a row that
  -- changed since this read, is decided below, where answer_replay keeps the same test.
  select k.stripe_idempotency_key, k.attempt, k.response_status, k.response_body, o.id, o.event_id
  into v_result.stripe_idempotency_key, v_result.attempt, v_result.response_status,
       v_result.response_body, v_result.order_id, v_result.event_id
  from public.stripe_idempotency_keys k
  join public.orders o on o.id = k.order_id
  where k.operation_type = private.checkout_operation() and k.operation_id = p_operation_id
    and k.status = 'completed' and k.request_fingerprint = p_request_fingerprint
    and o.paid_at is null and o.status = 'pending' and o.hold_expires_at > p_now;
  if found then
    v_result.outcome := 'replay';
    v_result.operation_id := p_operation_id;
    return v_result; -- every other field null, as answer_replay leaves them
  end if;

  if p_lock_timeout_ms is not null then
    perform set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  end if;
  v_order_id := private.uuid_v7();
  v_request := (p_operation_id, p_event_id, p_items, p_user_id, p_guest_email, p_guest_name,
    p_success_url, p_cancel_url, p_client_address, p_now + make_interval(secs => p_hold_seconds),
    p_now + make_interval(secs => p_hold_seconds + p_hold_grace_seconds), p_now)::private.checkout_request;

  v_claim := public.claim_stripe_idempotency(private.checkout_operation(), p_operation_id,
    p_stripe_idempotency_key, p_request_fingerprint, p_lease_token, p_lease_seconds,
    jsonb_build_object('event_id', p_event_id), p_now, v_order_id);
  v_result := private.checkout_claim_of(v_claim.outcome, p_operation_id, v_claim.stripe_idempotency_key,
    v_claim.lease_token, v_claim.lease_expires_at, v_claim.attempt);

  case v_claim.outcome
  when 'conflict', 'mismatch' then
    return v_result;
  when 'created' then
    -- Cleanup may have forgotten the operation while its order was paid: never charge again.
    perform private.refuse_if_paid(p_operation_id);
    if num_nonnulls(p_max_pending_per_buyer, p_max_pending_per_address) > 0 then
      perform private.enforce_pending_hold_limits(p_user_id, p_guest_email, p_client_address,
        p_max_pending_per_buyer, p_max_pending_per_address, p_pending_window_seconds, p_now);
    end if;
    return private.create_checkout_order(v_order_id, v_request, v_result);
  when 'takeover' then
    v_result := private.resume_takeover(v_result, v_claim.order_id, p_stripe_idempotency_key, p_now);
  when 'replay' then
    v_result := private.answer_replay(v_result, v_claim, p_stripe_idempotency_key, p_lease_token,
      p_lease_seconds, p_now);
  else
    perform private.refuse_if_paid(p_operation_id); -- retry
  end case;
  if v_result.outcome not in ('retry', 'renew') then
    return v_result;
  end if;

  -- retry and renew: a new order for the new key (the old order stays as history).
  v_result := private.create_checkout_order(v_order_id, v_request, v_result);
  update public.stripe_idempotency_keys k
  set order_id = v_order_id
  where k.operation_type = private.checkout_operation() and k.operation_id = p_operation_id;
  return v_result;
end;
$$;
comment on function public.claim_checkout(text, text, text, uuid, uuid, jsonb, uuid, text, text, text, text, integer, integer, timestamptz, inet, integer, integer, integer, integer, integer) is
  'Atomic checkout claim: idempotency claim plus order and capacity hold in one statement; waits at most p_lock_timeout_ms for a lock.';

-- Completes a checkout attempt: the stored response and the session on the order, one statement.
create or replace function public.record_checkout(
  p_operation_id text,
  p_lease_token uuid,
  p_session_id text,
  p_response_body jsonb,
  p_now timestamptz default now()
)
returns void
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  v_row := public.record_stripe_idempotency(private.checkout_operation(), p_operation_id, p_lease_token, p_session_id,
    201, p_response_body, jsonb_build_object('session_id', p_session_id), p_now);
  update public.orders o
  set stripe_checkout_session_id = p_session_id
  where o.id = v_row.order_id
    and (o.stripe_checkout_session_id is null or o.stripe_checkout_session_id = p_session_id);
  if not found then
    raise exception using errcode = 'SI002',
      message = format('Cannot record checkout %s: its order already has another session', p_operation_id);
  end if;
end;
$$;
comment on function public.record_checkout(text, uuid, text, jsonb, timestamptz) is
  'Completes a checkout attempt (lease holder only) and links the Checkout Session to its order.';

-- Ends a failed checkout attempt. When Stripe answered (key burnt), the order is cancelled so its
-- seats are free at once; when it did not, the order keeps its hold, since the session may exist.
create or replace function public.release_checkout(
  p_operation_id text,
  p_lease_token uuid,
  p_key_consumed boolean,
  p_error text default null,
  p_now timestamptz default now()
)
returns text
language plpgsql volatile set search_path = ''
as $$
declare
  v_status text;
begin
  v_status := public.release_stripe_idempotency(private.checkout_operation(), p_operation_id, p_lease_token,
    p_key_consumed, p_error, p_now);
  if v_status = 'failed' then
    update public.orders o
    set status = 'cancelled'
    from public.stripe_idempotency_keys k
    where k.operation_type = private.checkout_operation() and k.operation_id = p_operation_id
      and o.id = k.order_id
      and o.status = 'pending';
  end if;
  return v_status;
end;
$$;
comment on function public.release_checkout(text, uuid, boolean, text, timestamptz) is
  'Ends a failed checkout attempt; cancels the order (freeing seats) only when Stripe answered.';

revoke execute on function
  public.claim_checkout(text, text, text, uuid, uuid, jsonb, uuid, text, text, text, text, integer, integer, timestamptz, inet, integer, integer, integer, integer, integer),
  public.record_checkout(text, uuid, text, jsonb, timestamptz),
  public.release_checkout(text, uuid, boolean, text, timestamptz)
from public, anon, authenticated;

grant execute on function
  public.claim_checkout(text, text, text, uuid, uuid, jsonb, uuid, text, text, text, text, integer, integer, timestamptz, inet, integer, integer, integer, integer, integer),
  public.record_checkout(text, uuid, text, jsonb, timestamptz),
  public.release_checkout(text, uuid, boolean, text, timestamptz)
to service_role;
