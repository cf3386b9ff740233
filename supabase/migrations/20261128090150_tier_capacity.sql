-- Capacity without history: each tier's seats are counted by a counter row kept in the same
-- transaction as the order, and pending holds are listed in a table of their own, so a claim
-- never scans past orders. What a claim reads is O(1) in the history: one counter row, plus the
-- tier's holds that have lapsed (seats_held_until passed) and that Stripe has not ended yet.
-- Objects: tables private.tier_capacity (per tier: paid seats, held seats) and private.seat_holds
--          (per tier of each pending order: its seats and until when they count); triggers on
--          events.ticket_tiers, public.orders and public.order_items that keep both in step with
--          the rows, whoever writes them; functions in private: lock_tier_capacity,
--          tier_seats_taken, tier_seats_recounted, tier_lacks_room; in public (operators):
--          check_tier_capacity, repair_tier_capacity, release_lapsed_seat_holds (its pg_cron job
--          is scheduled with the others). The checkout functions that take seats
--          (create_checkout_order, hold_tier_seats, order_seats_unavailable, claim_checkout with
--          its lock timeout) live with the checkout and webhook migrations.
-- Design:  sold seats (paid_seats) are those of orders paid or partially refunded; a full
--          refund gives them back. Seats taken at p_now = paid_seats + held_seats - (seats of the tier's holds with
--          held_until <= p_now). The subtraction is what frees an expired hold without any job:
--          the hold stops counting the instant its seats_held_until passes. A hold row exists
--          exactly while its order is pending and goes when Stripe's word (paid, expired,
--          cancelled) moves the order on. Lapsed holds of orders Stripe never told us about are
--          the only ones a claim reads; the 15-minute job deletes them (and takes their seats off
--          held_seats), so even a lost webhook per checkout cannot make claims slower over time.
--          One counter row per tier, not several: capacity is one number, so a claim that split
--          it over N rows would have to lock all N to say "sold out" exactly, or give each row a
--          share of the seats and move seats between them near the end. The claim instead takes
--          the tier's row with its last write (the order and its items are written first, the
--          counter update comes last, the capacity check after it), so the lock is held for the
--          check and the commit; BENCHMARKS.md measures it against the single-row limit.
-- Risks:   the counters are derived data. Every change of an order's status or
--          seats_held_until, of an order item, or of a tier's capacity goes through a trigger
--          here, so a direct UPDATE by an operator keeps them exact too. TRUNCATE of order_items
--          zeroes every counter. check_tier_capacity recomputes everything from the rows and
--          lists any tier that disagrees; repair_tier_capacity rebuilds one tier.
-- Lock order (unchanged): the idempotency row → the order → the tiers in id order; a tier is now
--          its private.tier_capacity row (events.ticket_tiers rows are no longer locked by
--          checkouts, only read). A hold row changes only in a transaction that holds its tier's
--          counter row (or, for a new order's holds, takes it before it commits), so the count
--          read under that lock is exact.
-- Errors:  CK003 sold out (as before); 55P03 lock_not_available when a claim waited longer than
--          p_lock_timeout_ms for a lock (the function answers 503 temporarily_unavailable).

-- ------------------------------------------------------------------------------------------
-- Tables
-- ------------------------------------------------------------------------------------------

create table private.tier_capacity (
  tier_id uuid primary key references events.ticket_tiers (id) on delete cascade,
  paid_seats bigint not null default 0 check (paid_seats >= 0),
  held_seats bigint not null default 0 check (held_seats >= 0)
);
comment on table private.tier_capacity is
  'One row per tier: seats sold and seats held by pending orders. The tier''s lock for every seller.';
comment on column private.tier_capacity.paid_seats is 'Seats of the tier''s paid orders.';
comment on column private.tier_capacity.held_seats is
  'Seats of the rows in private.seat_holds for this tier (lapsed ones included until the job deletes them).';

create table private.seat_holds (
  order_id uuid not null,
  tier_id uuid not null,
  quantity integer not null check (quantity > 0),
  held_until timestamptz not null,
  primary key (order_id, tier_id),
  foreign key (order_id, tier_id) references public.order_items (order_id, tier_id) on delete cascade
);
comment on table private.seat_holds is
  'The seats of each pending order, per tier, and until when they count (the order''s seats_held_until).';
-- What a claim reads besides its counter: this tier's holds that lapsed by p_now.
create index seat_holds_tier_held_until_idx on private.seat_holds (tier_id, held_until) include (quantity);

alter table private.tier_capacity enable row level security;
alter table private.seat_holds enable row level security;
-- Service only: RLS on, no policies. The triggers run as whoever writes orders (service_role).
revoke all on private.tier_capacity, private.seat_holds from public, anon, authenticated;
grant select, insert, update, delete on private.tier_capacity, private.seat_holds to service_role;

-- ------------------------------------------------------------------------------------------
-- Reading and locking a tier's count
-- ------------------------------------------------------------------------------------------

-- Locks a tier's counter row (creating it if the tier predates its trigger). Every writer of a
-- tier's counter or holds calls this first, in tier id order.
create or replace function private.lock_tier_capacity(p_tier_id uuid)
returns void
language plpgsql volatile set search_path = ''
as $$
begin
  perform 1 from private.tier_capacity c where c.tier_id = p_tier_id for update;
  if not found then
    insert into private.tier_capacity (tier_id) values (p_tier_id) on conflict do nothing;
    perform 1 from private.tier_capacity c where c.tier_id = p_tier_id for update;
  end if;
end;
$$;
comment on function private.lock_tier_capacity(uuid) is
  'Internal: locks a tier''s counter row (the tier''s lock for every seller).';

-- Seats of a tier currently taken, from its counter: paid plus held, minus the holds that lapsed
-- by p_now. Exact when read under the tier's lock (lock_tier_capacity, in an earlier statement).
-- PL/pgSQL, like the other helpers on the claim's path: a SQL function with a pinned
-- search_path is never inlined and is planned again on every call.
create or replace function private.tier_seats_taken(p_tier_id uuid, p_now timestamptz default now())
returns bigint
language plpgsql stable set search_path = ''
as $$
begin
  return coalesce((
    select c.paid_seats + c.held_seats
           - coalesce((select sum(h.quantity) from private.seat_holds h
                       where h.tier_id = c.tier_id and h.held_until <= p_now), 0)
    from private.tier_capacity c where c.tier_id = p_tier_id), 0);
end;
$$;
comment on function private.tier_seats_taken(uuid, timestamptz) is
  'Seats counted against a tier''s capacity, from its counter: paid plus pending holds still held (seats_held_until).';

-- The same figure recounted from the orders themselves: what the counter must equal.
create or replace function private.tier_seats_recounted(p_tier_id uuid, p_now timestamptz default now())
returns bigint
language sql stable set search_path = ''
as $$
  select coalesce(sum(i.quantity), 0)
  from public.order_items i
  join public.orders o on o.id = i.order_id
  where i.tier_id = p_tier_id
    and (o.status in ('paid', 'partially_refunded') or (o.status = 'pending' and o.seats_held_until > p_now));
$$;
comment on function private.tier_seats_recounted(uuid, timestamptz) is
  'Seats of a tier recounted from its orders (scans them: for checks, never for a claim).';

-- Whether a tier (its counter locked by the caller) lacks room for p_quantity more seats now.
-- Unlimited tiers (capacity null) never do, and are not counted at all.
create or replace function private.tier_lacks_room(
  p_tier_id uuid,
  p_capacity integer,
  p_quantity integer,
  p_now timestamptz
)
returns boolean
language plpgsql stable set search_path = ''
as $$
begin
  return p_capacity is not null and private.tier_seats_taken(p_tier_id, p_now) + p_quantity > p_capacity;
end;
$$;

-- ------------------------------------------------------------------------------------------
-- Triggers: the counters follow the rows
-- ------------------------------------------------------------------------------------------

-- A new tier gets its counter row.
create or replace function private.count_new_tiers()
returns trigger
language plpgsql set search_path = ''
as $$
begin
  insert into private.tier_capacity (tier_id) select t.id from new_tiers t on conflict do nothing;
  return null;
end;
$$;
create trigger ticket_tiers_count_new after insert on events.ticket_tiers
  referencing new table as new_tiers
  for each statement execute function private.count_new_tiers();

-- A capacity change waits for the tier's lock, so no claim decides on the old figure after it.
create or replace function private.lock_tier_for_capacity_change()
returns trigger
language plpgsql set search_path = ''
as $$
begin
  perform private.lock_tier_capacity(new.id);
  return new;
end;
$$;
create trigger ticket_tiers_capacity_lock before update of capacity on events.ticket_tiers
  for each row when (old.capacity is distinct from new.capacity)
  execute function private.lock_tier_for_capacity_change();

-- Adds seats to a tier's counter, which locks it (the tier's lock; callers go in tier id order).
create or replace function private.add_tier_seats(p_tier_id uuid, p_paid bigint, p_held bigint)
returns void
language plpgsql volatile set search_path = ''
as $$
begin
  update private.tier_capacity c
  set paid_seats = c.paid_seats + p_paid, held_seats = c.held_seats + p_held
  where c.tier_id = p_tier_id;
  if not found then
    perform private.lock_tier_capacity(p_tier_id);
    update private.tier_capacity c
    set paid_seats = c.paid_seats + p_paid, held_seats = c.held_seats + p_held
    where c.tier_id = p_tier_id;
  end if;
end;
$$;

-- New order items count at once: a pending order's seats are held, a paid order's sold. One
-- statement may insert one item (a claim) or millions (a bulk load): the rows are walked in tier
-- order with statements planned once per session, and each tier's counter is updated once per
-- statement (the same row updated again and again in one transaction gets slower each time). A
-- claim has already locked those counters, in tier id order.
create or replace function private.count_new_order_items()
returns trigger
language plpgsql set search_path = ''
as $$
declare
  v_item record;
  v_order record;
  v_tier uuid;
  v_paid bigint := 0;
  v_held bigint := 0;
begin
  for v_item in select i.order_id, i.tier_id, i.quantity from new_items i order by i.tier_id loop
    if v_tier is distinct from v_item.tier_id then
      if v_paid <> 0 or v_held <> 0 then
        perform private.add_tier_seats(v_tier, v_paid, v_held);
      end if;
      v_tier := v_item.tier_id;
      v_paid := 0;
      v_held := 0;
    end if;
    select o.status, o.seats_held_until into v_order from public.orders o where o.id = v_item.order_id;
    if v_order.status = 'pending' then
      insert into private.seat_holds (order_id, tier_id, quantity, held_until)
      values (v_item.order_id, v_item.tier_id, v_item.quantity, v_order.seats_held_until);
      v_held := v_held + v_item.quantity;
    elsif v_order.status in ('paid', 'partially_refunded') then
      v_paid := v_paid + v_item.quantity;
    end if;
  end loop;
  if v_paid <> 0 or v_held <> 0 then
    perform private.add_tier_seats(v_tier, v_paid, v_held);
  end if;
  return null;
end;
$$;
create trigger order_items_count_new after insert on public.order_items
  referencing new table as new_items
  for each statement execute function private.count_new_order_items();

-- An order's status or seats_held_until changed (Stripe's word, a release, a renewal, an
-- operator): its holds and the counters follow, tier by tier in id order.
create or replace function private.count_order_change()
returns trigger
language plpgsql set search_path = ''
as $$
declare
  v_item record;
  v_was_held integer;
begin
  for v_item in
    select i.tier_id, i.quantity from public.order_items i where i.order_id = new.id order by i.tier_id
  loop
    perform private.lock_tier_capacity(v_item.tier_id);
    v_was_held := null;
    delete from private.seat_holds h where h.order_id = new.id and h.tier_id = v_item.tier_id
    returning h.quantity into v_was_held;
    if new.status = 'pending' then
      insert into private.seat_holds (order_id, tier_id, quantity, held_until)
      values (new.id, v_item.tier_id, v_item.quantity, new.seats_held_until);
    end if;
    update private.tier_capacity c
    set paid_seats = c.paid_seats
                     + case when new.status in ('paid', 'partially_refunded') then v_item.quantity else 0 end
                     - case when old.status in ('paid', 'partially_refunded') then v_item.quantity else 0 end,
        held_seats = c.held_seats - coalesce(v_was_held, 0)
                     + case when new.status = 'pending' then v_item.quantity else 0 end
    where c.tier_id = v_item.tier_id;
  end loop;
  return null;
end;
$$;
create trigger orders_count_change after update of status, seats_held_until on public.orders
  for each row
  when (old.status is distinct from new.status or old.seats_held_until is distinct from new.seats_held_until)
  execute function private.count_order_change();

-- An order item removed (orders are history and are not deleted in normal operation; an
-- operator might): its seats leave the counters.
create or replace function private.uncount_order_item()
returns trigger
language plpgsql set search_path = ''
as $$
declare
  v_status text;
  v_was_held integer;
begin
  select o.status into v_status from public.orders o where o.id = old.order_id;
  perform private.lock_tier_capacity(old.tier_id);
  delete from private.seat_holds h where h.order_id = old.order_id and h.tier_id = old.tier_id
  returning h.quantity into v_was_held;
  update private.tier_capacity c
  set paid_seats = c.paid_seats - case when v_status in ('paid', 'partially_refunded') then old.quantity else 0 end,
      held_seats = c.held_seats - coalesce(v_was_held, 0)
  where c.tier_id = old.tier_id;
  return old;
end;
$$;
create trigger order_items_uncount before delete on public.order_items
  for each row execute function private.uncount_order_item();

-- A deleted order takes its items with it, in tier id order, while its status is still there to
-- say whether they were sold (the cascade that follows finds nothing left).
create or replace function private.uncount_deleted_order()
returns trigger
language plpgsql set search_path = ''
as $$
declare
  v_tier uuid;
begin
  for v_tier in select i.tier_id from public.order_items i where i.order_id = old.id order by i.tier_id loop
    delete from public.order_items i where i.order_id = old.id and i.tier_id = v_tier;
  end loop;
  return old;
end;
$$;
create trigger orders_uncount_deleted before delete on public.orders
  for each row execute function private.uncount_deleted_order();

-- TRUNCATE fires no row triggers: with every order item gone, every counter is zero.
create or replace function private.zero_counters()
returns trigger
language plpgsql set search_path = ''
as $$
begin
  delete from private.seat_holds;
  update private.tier_capacity c set paid_seats = 0, held_seats = 0
  where c.paid_seats <> 0 or c.held_seats <> 0;
  return null;
end;
$$;
create trigger order_items_zero_counters after truncate on public.order_items
  for each statement execute function private.zero_counters();

-- ------------------------------------------------------------------------------------------
-- The checkout path on the counters
-- ------------------------------------------------------------------------------------------


-- ------------------------------------------------------------------------------------------
-- Operators: check, repair, and the job that bounds lapsed holds
-- ------------------------------------------------------------------------------------------

-- Every tier whose counter disagrees with its orders, recounted from the rows (a full scan:
-- run it when the database is quiet enough, never in a request). Empty means all agree.
--   paid_*: seats of paid orders; held_*: seats of pending orders still held at p_now;
--   stray_holds: hold rows that do not mirror their order (status, seats or held_until).
-- Run it with p_now at or after the last release_lapsed_seat_holds run (now(), by default).
create or replace function public.check_tier_capacity(p_now timestamptz default now())
returns table (
  tier_id uuid,
  capacity integer,
  paid_counted bigint,
  paid_recounted bigint,
  held_counted bigint,
  held_recounted bigint,
  held_listed bigint,
  stray_holds bigint,
  problem text
)
language sql stable set search_path = ''
as $$
  with recount as (
    select i.tier_id,
           coalesce(sum(i.quantity) filter (where o.status in ('paid', 'partially_refunded')), 0) as paid,
           coalesce(sum(i.quantity) filter (where o.status = 'pending' and o.seats_held_until > p_now), 0) as held
    from public.order_items i join public.orders o on o.id = i.order_id
    group by i.tier_id
  ), holds as (
    select h.tier_id,
           sum(h.quantity) as listed,
           coalesce(sum(h.quantity) filter (where h.held_until <= p_now), 0) as lapsed,
           count(*) filter (where o.id is null or o.status <> 'pending'
                              or o.seats_held_until <> h.held_until or i.quantity <> h.quantity) as stray
    from private.seat_holds h
    left join public.orders o on o.id = h.order_id
    left join public.order_items i on i.order_id = h.order_id and i.tier_id = h.tier_id
    group by h.tier_id
  ), compared as (
    select t.id as tier_id, t.capacity, c.tier_id is not null as has_counter,
           c.paid_seats as paid_counted, coalesce(r.paid, 0) as paid_recounted,
           c.held_seats - coalesce(hs.lapsed, 0) as held_counted, coalesce(r.held, 0) as held_recounted,
           c.held_seats as held_seats, coalesce(hs.listed, 0) as held_listed,
           coalesce(hs.stray, 0) as stray_holds
    from events.ticket_tiers t
    left join private.tier_capacity c on c.tier_id = t.id
    left join recount r on r.tier_id = t.id
    left join holds hs on hs.tier_id = t.id
  )
  select x.tier_id, x.capacity, x.paid_counted, x.paid_recounted, x.held_counted, x.held_recounted,
         x.held_listed, x.stray_holds,
         concat_ws('; ',
           case when not x.has_counter then 'no counter row' end,
           case when x.paid_counted <> x.paid_recounted then 'paid seats differ' end,
           case when x.held_seats <> x.held_listed then 'held_seats differs from its hold rows' end,
           case when x.held_counted <> x.held_recounted then 'held seats differ' end,
           case when x.stray_holds > 0 then 'hold rows disagree with their orders' end)
  from compared x
  where not x.has_counter or x.paid_counted <> x.paid_recounted or x.held_seats <> x.held_listed
     or x.held_counted <> x.held_recounted or x.stray_holds > 0
  order by x.tier_id;
$$;
comment on function public.check_tier_capacity(timestamptz) is
  'Operators: tiers whose capacity counter disagrees with their orders, recounted from the rows; empty when all agree.';

-- Rebuilds one tier's holds and counter from its orders, under the tier's lock. Returns the
-- seats taken at p_now afterwards. For a tier check_tier_capacity reported.
create or replace function public.repair_tier_capacity(p_tier_id uuid, p_now timestamptz default now())
returns bigint
language plpgsql volatile set search_path = ''
as $$
begin
  perform private.lock_tier_capacity(p_tier_id);
  delete from private.seat_holds h where h.tier_id = p_tier_id;
  insert into private.seat_holds (order_id, tier_id, quantity, held_until)
  select i.order_id, i.tier_id, i.quantity, o.seats_held_until
  from public.order_items i join public.orders o on o.id = i.order_id
  where i.tier_id = p_tier_id and o.status = 'pending'
    and o.seats_held_until > p_now;
  update private.tier_capacity c
  set paid_seats = (select coalesce(sum(i.quantity), 0) from public.order_items i
                    join public.orders o on o.id = i.order_id
                    where i.tier_id = p_tier_id and o.status in ('paid', 'partially_refunded')),
      held_seats = (select coalesce(sum(h.quantity), 0) from private.seat_holds h where h.tier_id = p_tier_id)
  where c.tier_id = p_tier_id;
  return private.tier_seats_taken(p_tier_id, p_now);
end;
$$;
comment on function public.repair_tier_capacity(uuid, timestamptz) is
  'Operators: rebuilds one tier''s holds and counter from its orders, under the tier''s lock.';

-- Deletes holds whose seats_held_until passed before p_now (their seats already stopped counting
-- then) and takes them off their tiers' held_seats, tier by tier in id order, each under its
-- lock. The orders stay pending: only Stripe says how a session ended. What this bounds is the
-- work of a claim, which reads the lapsed holds of its tier until they are gone. Returns how many
-- holds it deleted. Run by pg_cron every 15 minutes.
create or replace function public.release_lapsed_seat_holds(p_now timestamptz default now())
returns bigint
language plpgsql volatile set search_path = ''
as $$
declare
  v_tier uuid;
  v_deleted bigint := 0;
  v_count bigint;
  v_seats bigint;
begin
  for v_tier in
    select distinct h.tier_id from private.seat_holds h where h.held_until < p_now order by h.tier_id
  loop
    perform private.lock_tier_capacity(v_tier);
    with gone as (
      delete from private.seat_holds h where h.tier_id = v_tier and h.held_until < p_now returning h.quantity
    )
    select count(*), coalesce(sum(g.quantity), 0) into v_count, v_seats from gone g;
    update private.tier_capacity c set held_seats = c.held_seats - v_seats where c.tier_id = v_tier;
    v_deleted := v_deleted + v_count;
  end loop;
  return v_deleted;
end;
$$;
comment on function public.release_lapsed_seat_holds(timestamptz) is
  'pg_cron: deletes holds past their seats_held_until (already not counted) so claims never read many; returns the count.';

revoke execute on function
  public.check_tier_capacity(timestamptz),
  public.repair_tier_capacity(uuid, timestamptz),
  public.release_lapsed_seat_holds(timestamptz)
from public, anon, authenticated;

grant execute on function
  public.check_tier_capacity(timestamptz),
  public.repair_tier_capacity(uuid, timestamptz),
  public.release_lapsed_seat_holds(timestamptz)
to service_role;

