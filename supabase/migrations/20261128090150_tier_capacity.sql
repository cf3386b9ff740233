-- Capacity without history: each tier's seats are counted by counter rows kept in the same
-- transaction as the order, and pending holds are listed in a table of their own, so a claim
-- never scans past orders. What a claim reads is O(1) in the history: one counter row, plus the
-- tier's holds that have lapsed (seats_held_until passed) and that Stripe has not ended yet.
-- Objects: tables private.tier_capacity (per tier and shard: its allotment, paid seats, held
--          seats) and private.seat_holds (per tier of each pending order: its seats, its shard
--          and until when they count); triggers on events.ticket_tiers, public.orders and
--          public.order_items that keep both in step with the rows, whoever writes them
--          (a claim's own items excepted: create_checkout_order counts them itself);
--          functions in private: tier_capacity_shards, order_capacity_shard, tier_allotments,
--          create_tier_counter, tier_shards, lock_tier_shard, lock_order_shard, lock_tier_capacity,
--          tier_shard_lapsed, tier_shard_taken, tier_shards_taken, tier_seats_taken,
--          tier_seats_recounted, reallot_tier, make_tier_room, take_tier_room; in public
--          (operators):
--          check_tier_capacity, repair_tier_capacity, release_lapsed_seat_holds (its pg_cron job
--          is scheduled with the others). The checkout functions that take seats
--          (create_checkout_order, order_seats_unavailable, claim_checkout with
--          its lock timeout) live with the checkout and webhook migrations.
-- Design:  sold seats (paid_seats) are those of orders paid or partially refunded; a full
--          refund gives them back. Seats taken at p_now = paid_seats + held_seats - (seats of
--          the holds with held_until <= p_now). The subtraction is what frees an expired hold
--          without any job: the hold stops counting the instant its seats_held_until passes. A
--          hold row exists exactly while its order is pending and goes when Stripe's word (paid,
--          expired, cancelled) moves the order on. Lapsed holds of orders Stripe never told us
--          about are the only ones a claim reads; the 15-minute job deletes them (and takes
--          their seats off held_seats), so even a lost webhook per checkout cannot make claims
--          slower over time.
--          Shards: a tier's counter is N rows (N = tier_capacity_shards(capacity) when the
--          counter is made, and fixed from then on: 64 for unlimited tiers and tiers of 8,192
--          seats or more, 8 from 256 seats, else 1). An order's seats of a tier always count on
--          the shard order_capacity_shard(order id, N) (the order id's last 16 bits mod N), so
--          every trigger knows the one row it changes; a hold row and an order item carry their
--          shard, and the item references its counter row (tier_id, shard), the lock the claim
--          already holds, instead of the tier's row, which all buyers of a tier would share.
--          Each shard of a limited tier has an allotment (allotted); the allotments add up to
--          the capacity and no shard takes more than its allotment, so the sum of the shards'
--          seats never exceeds the capacity. A claim (take_tier_room) locks only its shard, by
--          the update that adds its seats, and checks that shard's seats against its allotment
--          (the fast path). When it has no room, the claim undoes that update and its lock (a
--          rolled-back subtransaction) and takes the slow path (make_tier_room): with every
--          shard of the tier locked in shard order it checks the tier's whole room (none: CK003,
--          exactly as with one row) and divides the seats left evenly again, the claim's shard
--          getting the claim's seats. So sold out is said only when the whole tier has no room,
--          and nothing is ever sold beyond the capacity. With N = 1 the one shard's allotment is
--          the capacity: small tiers count as one row.
--          Before locking every shard the slow path reads the tier unlocked: when even that
--          committed state leaves no room, it answers sold out at once. That state is one the
--          tier was in during the claim, so the answer is the one a locked read would have
--          given a moment earlier, and sold-out claims after a sell-out never queue on all the
--          shards.
-- Risks:   the counters are derived data. Every change of an order's status or
--          seats_held_until, of an order item, or of a tier's capacity goes through a trigger
--          here, so a direct UPDATE by an operator keeps them exact too. TRUNCATE of order_items
--          zeroes every counter. check_tier_capacity recomputes everything from the rows and
--          lists any tier that disagrees (shards included: seats on the wrong shard, a shard
--          over its allotment, allotments that do not add up to the capacity);
--          repair_tier_capacity rebuilds one tier and divides its allotments again.
--          Capacity is checked by the paths that take seats (a claim, a late payment); a write
--          that adds seats without them (an operator setting an ended order back to paid, a
--          bulk load with the triggers on) is counted but not checked, as with one row, and on
--          a sharded tier it may also leave its shard over its allotment, which lets claims on
--          the other shards sell that many seats too: check_tier_capacity reports it and
--          repair_tier_capacity divides the allotments again (run it after such writes).
--          A capacity lowered below the seats taken leaves every shard of a sharded tier with
--          no allotment: each claim takes the slow path, which refuses until the tier has room
--          and then divides it again. The shard count of a tier never changes (a tier made
--          with 100 seats and raised to 10,000 stays one row).
-- Lock order (unchanged): the idempotency row → the order → the tiers in id order; a tier is
--          its private.tier_capacity rows (events.ticket_tiers rows are not locked by
--          checkouts, only read), and within a tier the shards in shard order. A claim, a
--          payment or a status change takes one shard per tier (its order's); the slow path,
--          a capacity change, repair and the release job take the tier's shards in shard
--          order, the slow path only after undoing its own shard's lock. A hold row changes
--          only in a transaction that holds its shard's counter row, so the count read under
--          that lock is exact. One transaction that changes several orders of one sharded tier
--          (an operator's bulk UPDATE) takes their shards in row order and may deadlock with a
--          slow-path claim; PostgreSQL aborts one of them (SQLSTATE 40P01), as for any two
--          statements locking rows in different orders.
-- Errors:  CK003 sold out (as before); 55P03 lock_not_available when a claim waited longer than
--          p_lock_timeout_ms for a lock (the function answers 503 temporarily_unavailable).

-- ------------------------------------------------------------------------------------------
-- Tables
-- ------------------------------------------------------------------------------------------

create table private.tier_capacity (
  tier_id uuid not null references events.ticket_tiers (id) on delete cascade,
  shard smallint not null,
  shards smallint not null,
  allotted integer check (allotted >= 0),
  paid_seats bigint not null default 0 check (paid_seats >= 0),
  held_seats bigint not null default 0 check (held_seats >= 0),
  -- One row per heap page (see below); last, so that an update's WAL record leaves it out (the
  -- suffix it shares with the row's previous version on the same page).
  page_padding text not null default repeat(' ', 720),
  primary key (tier_id, shard),
  check (shard >= 0 and shard < shards)
)
-- One counter row per heap page: with fillfactor 10 and the padding a row fills the tenth of a
-- page that an insert may use, so each shard gets a page of its own. A page that many backends
-- keep pinned cannot be pruned (pruning needs a cleanup lock), so with a tier's 64 shards on
-- one page its updates overflowed it and moved rows to other pages, each move an index entry:
-- on a scratch cluster, five 6-second runs at 64 clients on one tier ran 913, 783, 843, 764,
-- 685 claims/s with the shards spread over 60 pages by the end; with a page each, 1,010, 931,
-- 932, 995, 975, and still one page each. Cost: 8 KiB per shard (a 64-shard tier 512 KiB).
with (fillfactor = 10);
comment on table private.tier_capacity is
  'One row per tier and shard: its allotment, seats sold and seats held by pending orders. A shard''s lock for every seller.';
comment on column private.tier_capacity.page_padding is
  'Fills the row to a tenth of a page, so that with fillfactor 10 each counter row has a heap page of its own.';
comment on column private.tier_capacity.shards is 'The tier''s number of shards (the same on each of its rows, fixed).';
comment on column private.tier_capacity.allotted is
  'The shard''s share of the tier''s capacity (null when unlimited); the shares add up to the capacity.';
comment on column private.tier_capacity.paid_seats is 'Seats of the tier''s paid orders counted on this shard.';
comment on column private.tier_capacity.held_seats is
  'Seats of the rows in private.seat_holds for this tier and shard (lapsed ones included until the job deletes them).';

create table private.seat_holds (
  order_id uuid not null,
  tier_id uuid not null,
  quantity integer not null check (quantity > 0),
  held_until timestamptz not null,
  shard smallint not null,
  primary key (order_id, tier_id),
  foreign key (order_id, tier_id) references public.order_items (order_id, tier_id) on delete cascade
);
comment on table private.seat_holds is
  'The seats of each pending order, per tier, until when they count (the order''s seats_held_until), and their shard.';
-- What a claim reads besides its counter: the holds of its tier and shard that lapsed by
-- p_now. The shard is in the key, so that a claim reads only its own shard's lapsed holds
-- (and can mark the deleted ones dead), not every lapsed hold of the tier.
create index seat_holds_tier_shard_held_until_idx on private.seat_holds (tier_id, shard, held_until)
  include (quantity);

-- An order item's tier is referenced through the counter row it counts on (its columns are
-- in 20261128090100_orders.sql): a claim holds that row's lock already, so the check takes no
-- lock of its own, and a tier with items still cannot be deleted (its counter rows cascade,
-- and the items refuse it).
alter table public.order_items add constraint order_items_tier_shard_fkey
  foreign key (tier_id, shard) references private.tier_capacity (tier_id, shard);

alter table private.tier_capacity enable row level security;
alter table private.seat_holds enable row level security;
-- Service only: RLS on, no policies. The triggers run as whoever writes orders (service_role).
revoke all on private.tier_capacity, private.seat_holds from public, anon, authenticated;
grant select, insert, update, delete on private.tier_capacity, private.seat_holds to service_role;

-- ------------------------------------------------------------------------------------------
-- Shards and allotments
-- ------------------------------------------------------------------------------------------

-- How many shards a tier's counter gets when it is made (fixed from then on): 64 from 8,192
-- seats (128 or more each) and for unlimited tiers, so that 64 buyers at once of a large tier
-- rarely wait for the same row; 8 from 256 seats (32 or more each); else one. Fewer shards
-- leave more seats on each, so claims near a sell-out take the slow path less often.
create or replace function private.tier_capacity_shards(p_capacity integer)
returns integer
language plpgsql immutable set search_path = ''
as $$
begin
  return case when p_capacity is null or p_capacity >= 8192 then 64
              when p_capacity >= 256 then 8
              else 1 end;
end;
$$;

-- The shard an order's seats of a tier count on: its id's last 16 bits (random in a v7 UUID),
-- mod the tier's shards. Depends on nothing but the id, which never changes.
create or replace function private.order_capacity_shard(p_order_id uuid, p_shards integer)
returns integer
language plpgsql immutable set search_path = ''
as $$
declare
  v_bytes bytea := uuid_send(p_order_id);
begin
  return (get_byte(v_bytes, 14) * 256 + get_byte(v_bytes, 15)) % p_shards;
end;
$$;

-- Allotments of a tier's shards (index shard + 1): each keeps its p_taken seats plus an even
-- share of what the capacity leaves, and shard p_shard gets p_quantity more on top. Null when
-- they do not fit; all null for an unlimited tier.
create or replace function private.tier_allotments(
  p_capacity integer,
  p_taken bigint[],
  p_shard integer,
  p_quantity integer
)
returns integer[]
language plpgsql immutable set search_path = ''
as $$
declare
  v_n integer := cardinality(p_taken);
  v_spare bigint;
  v_allotted integer[];
begin
  if p_capacity is null then
    return array_fill(null::integer, array[v_n]);
  end if;
  v_spare := p_capacity - p_quantity - (select coalesce(sum(x), 0) from unnest(p_taken) x);
  if v_spare < 0 then
    return null;
  end if;
  for i in 0 .. v_n - 1 loop
    v_allotted[i + 1] := p_taken[i + 1] + v_spare / v_n
      + case when (i - p_shard + v_n) % v_n < v_spare % v_n then 1 else 0 end
      + case when i = p_shard then p_quantity else 0 end;
  end loop;
  return v_allotted;
end;
$$;

-- Makes a tier's counter rows if it has none (a new tier, or one that predates its trigger):
-- its shards, the capacity divided evenly. Returns the tier's shards (null: no such tier).
create or replace function private.create_tier_counter(p_tier_id uuid)
returns integer
language plpgsql volatile set search_path = ''
as $$
declare
  v_capacity integer;
  v_shards integer;
  v_allotted integer[];
begin
  select t.capacity into v_capacity from events.ticket_tiers t where t.id = p_tier_id;
  if not found then
    return null;
  end if;
  v_shards := private.tier_capacity_shards(v_capacity);
  v_allotted := private.tier_allotments(v_capacity, array_fill(0::bigint, array[v_shards]), 0, 0);
  insert into private.tier_capacity (tier_id, shard, shards, allotted)
  select p_tier_id, s, v_shards, v_allotted[s + 1] from generate_series(0, v_shards - 1) s
  on conflict do nothing;
  return (select c.shards from private.tier_capacity c where c.tier_id = p_tier_id and c.shard = 0);
end;
$$;

-- A tier's shards (making its counter if it has none). Read without a lock: it never changes.
create or replace function private.tier_shards(p_tier_id uuid)
returns integer
language plpgsql volatile set search_path = ''
as $$
declare
  v_shards integer;
begin
  select c.shards into v_shards from private.tier_capacity c where c.tier_id = p_tier_id and c.shard = 0;
  if v_shards is null then
    v_shards := private.create_tier_counter(p_tier_id);
  end if;
  return v_shards;
end;
$$;

-- ------------------------------------------------------------------------------------------
-- Reading and locking a tier's count
-- ------------------------------------------------------------------------------------------

-- Locks one shard of a tier (its counter exists: tier_shards made it); returns its allotment.
create or replace function private.lock_tier_shard(p_tier_id uuid, p_shard integer)
returns integer
language plpgsql volatile set search_path = ''
as $$
declare
  v_allotted integer;
begin
  select c.allotted into v_allotted from private.tier_capacity c
  where c.tier_id = p_tier_id and c.shard = p_shard
  for update;
  return v_allotted;
end;
$$;
comment on function private.lock_tier_shard(uuid, integer) is
  'Internal: locks one shard of a tier''s counter (the lock of the orders counted on it).';

-- Locks the shard of a tier that an order's seats count on; returns that shard. What every
-- writer of one order's seats takes (the triggers, a late payment judging its hold).
create or replace function private.lock_order_shard(p_tier_id uuid, p_order_id uuid)
returns integer
language plpgsql volatile set search_path = ''
as $$
declare
  v_shard integer := private.order_capacity_shard(p_order_id, private.tier_shards(p_tier_id));
begin
  perform private.lock_tier_shard(p_tier_id, v_shard);
  return v_shard;
end;
$$;
comment on function private.lock_order_shard(uuid, uuid) is
  'Internal: locks the shard of a tier that an order''s seats count on, and returns it.';

-- Locks every shard of a tier's counter, in shard order (creating the counter if the tier
-- predates its trigger). What a writer that changes the allotments takes.
create or replace function private.lock_tier_capacity(p_tier_id uuid)
returns void
language plpgsql volatile set search_path = ''
as $$
begin
  perform private.tier_shards(p_tier_id);
  perform 1 from private.tier_capacity c where c.tier_id = p_tier_id order by c.shard for update;
end;
$$;
comment on function private.lock_tier_capacity(uuid) is
  'Internal: locks all of a tier''s counter rows in shard order (the whole tier''s lock).';

-- Seats of one shard's holds that lapsed by p_now (what a counter row's held_seats still
-- includes until the release job deletes them). Exact when read under the shard's lock (in an
-- earlier statement). PL/pgSQL, like the other helpers on the claim's path: a SQL function
-- with a pinned search_path is never inlined and is planned again on every call. Generic plan
-- forced: with p_now's range unknown the plan cache judged the generic plan dearer and planned
-- this query again on every claim (0.18 ms, a tenth of a claim), for the same index scan.
create or replace function private.tier_shard_lapsed(p_tier_id uuid, p_shard integer, p_now timestamptz)
returns bigint
language plpgsql stable set search_path = '' set plan_cache_mode = force_generic_plan
as $$
begin
  return coalesce((select sum(h.quantity) from private.seat_holds h
                   where h.tier_id = p_tier_id and h.held_until <= p_now and h.shard = p_shard), 0);
end;
$$;

-- Seats taken on one shard at p_now: paid plus held, minus its holds that lapsed by p_now.
-- Exact when read under the shard's lock (in an earlier statement).
create or replace function private.tier_shard_taken(p_tier_id uuid, p_shard integer, p_now timestamptz)
returns bigint
language plpgsql stable set search_path = ''
as $$
begin
  return coalesce((select c.paid_seats + c.held_seats from private.tier_capacity c
                   where c.tier_id = p_tier_id and c.shard = p_shard), 0)
         - private.tier_shard_lapsed(p_tier_id, p_shard, p_now);
end;
$$;

-- Seats taken on each shard of a tier at p_now, in shard order (array index shard + 1).
create or replace function private.tier_shards_taken(p_tier_id uuid, p_now timestamptz)
returns bigint[]
language plpgsql stable set search_path = '' set plan_cache_mode = force_generic_plan
as $$
begin
  return (
    select array_agg(c.paid_seats + c.held_seats - coalesce(l.seats, 0) order by c.shard)
    from private.tier_capacity c
    cross join lateral (select sum(h.quantity) as seats from private.seat_holds h
                        where h.tier_id = c.tier_id and h.shard = c.shard and h.held_until <= p_now) l
    where c.tier_id = p_tier_id);
end;
$$;

-- Seats of a tier currently taken, from its counter (all shards): paid plus held, minus the
-- holds that lapsed by p_now (the sum of tier_shards_taken, in the caller's snapshot). Exact
-- when read under all the tier's shard locks.
create or replace function private.tier_seats_taken(p_tier_id uuid, p_now timestamptz default now())
returns bigint
language plpgsql stable set search_path = ''
as $$
begin
  return coalesce((select sum(x) from unnest(private.tier_shards_taken(p_tier_id, p_now)) x), 0);
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

-- Divides a tier's capacity among its shards again (the caller holds all of them), from the
-- seats p_taken on each, shard p_shard getting p_quantity more. Returns false, changing
-- nothing, when that does not fit the capacity. With p_quantity 0 (a capacity change, a
-- repair) a capacity below the seats taken leaves every shard without allotment (one shard:
-- the capacity), so that no claim's fast path can pass until the slow path divides again.
create or replace function private.reallot_tier(
  p_tier_id uuid,
  p_capacity integer,
  p_taken bigint[],
  p_shard integer,
  p_quantity integer
)
returns boolean
language plpgsql volatile set search_path = ''
as $$
declare
  v_n integer := cardinality(p_taken);
  v_allotted integer[] := private.tier_allotments(p_capacity, p_taken, p_shard, p_quantity);
  v_fits boolean := v_allotted is not null;
begin
  if not v_fits then
    if p_quantity > 0 then
      return false;
    end if;
    v_allotted := array_fill(case when v_n = 1 then p_capacity else 0 end, array[v_n]);
  elsif v_n = 1 then
    v_allotted := array[p_capacity];
  end if;
  update private.tier_capacity c set allotted = v_allotted[c.shard + 1]
  where c.tier_id = p_tier_id and c.allotted is distinct from v_allotted[c.shard + 1];
  return v_fits;
end;
$$;

-- The slow path of a claim whose shard lacks room: whether the tier has room for p_quantity
-- more seats now, and if so the allotments divided again with them on shard p_shard. Takes
-- all the tier's shards in shard order (the caller holds none of them), unless the committed
-- state read first already leaves no room (then it answers false without a lock).
create or replace function private.make_tier_room(
  p_tier_id uuid,
  p_shard integer,
  p_quantity integer,
  p_now timestamptz
)
returns boolean
language plpgsql volatile set search_path = ''
as $$
declare
  v_capacity integer;
  v_taken bigint;
begin
  -- One statement, one snapshot: the capacity and the seats of one committed state.
  select t.capacity, private.tier_seats_taken(t.id, p_now) into v_capacity, v_taken
  from events.ticket_tiers t where t.id = p_tier_id;
  if v_capacity is not null and v_taken + p_quantity > v_capacity then
    return false;
  end if;
  perform private.lock_tier_capacity(p_tier_id);
  -- Read after the locks: a capacity change takes them too.
  select t.capacity into v_capacity from events.ticket_tiers t where t.id = p_tier_id;
  return private.reallot_tier(p_tier_id, v_capacity, private.tier_shards_taken(p_tier_id, p_now),
    p_shard, p_quantity);
end;
$$;

-- Room for p_quantity more seats of a tier for order p_order_id, at p_now: takes the order's
-- shard of the tier, adding p_held seats to its held_seats (a claim's own seats; 0 for a late
-- payment, whose status change counts them), and returns that shard when it has room (fast
-- path) or the tier's allotments could be divided again to give it room (slow path, with all
-- the shards locked); null when the tier has no room, with nothing added. An unlimited tier
-- always has room (its shard is locked all the same). Callers take their tiers in id order.
-- What a claim and a late payment both use; the claim's order items name the shard it returns.
-- The fast path locks the shard with the update that adds the seats, in the subtransaction
-- that the slow path undoes: a lock taken in it and an update after it in the parent
-- transaction are two transaction ids on one row, which PostgreSQL records as a MultiXact
-- (one per claim, and a fifth slower at 16 clients on one tier, measured on a scratch cluster).
create or replace function private.take_tier_room(
  p_tier_id uuid,
  p_order_id uuid,
  p_quantity integer,
  p_now timestamptz,
  p_held integer
)
returns integer
language plpgsql volatile set search_path = ''
as $$
declare
  v_shards integer := private.tier_shards(p_tier_id);
  v_shard integer := private.order_capacity_shard(p_order_id, v_shards);
  v_allotted integer;
  v_seats bigint; -- the shard's paid and held seats, p_held included
begin
  begin
    update private.tier_capacity c set held_seats = c.held_seats + p_held
    where c.tier_id = p_tier_id and c.shard = v_shard
    returning c.allotted, c.paid_seats + c.held_seats into v_allotted, v_seats;
    if v_allotted is null
       or v_seats - private.tier_shard_lapsed(p_tier_id, v_shard, p_now) + p_quantity - p_held <= v_allotted then
      return v_shard; -- the subtransaction is kept, and the shard's lock and seats with it
    end if;
    raise exception using errcode = 'CKS01', message = 'the shard lacks room';
  exception when sqlstate 'CKS01' then
    null; -- rolled back: the shard's seats and lock go before the slow path takes them all
  end;
  -- One shard: its allotment is the capacity, so its room is the tier's.
  if v_shards = 1 or not private.make_tier_room(p_tier_id, v_shard, p_quantity, p_now) then
    return null;
  end if;
  if p_held > 0 then
    perform private.add_tier_seats(p_tier_id, v_shard, 0, p_held);
  end if;
  return v_shard;
end;
$$;
comment on function private.take_tier_room(uuid, uuid, integer, timestamptz, integer) is
  'Internal: locks an order''s shard of a tier with room for its seats (moving allotment if needed), adds p_held held seats to it and returns it; null when the tier has none.';

-- ------------------------------------------------------------------------------------------
-- Triggers: the counters follow the rows
-- ------------------------------------------------------------------------------------------

-- A new tier gets its counter rows.
create or replace function private.count_new_tiers()
returns trigger
language plpgsql set search_path = ''
as $$
begin
  perform private.create_tier_counter(t.id) from new_tiers t order by t.id;
  return null;
end;
$$;
create trigger ticket_tiers_count_new after insert on events.ticket_tiers
  referencing new table as new_tiers
  for each statement execute function private.count_new_tiers();

-- A capacity change takes all the tier's shards (so no claim decides on the old figure after
-- it) and divides the new capacity among them: each keeps its paid and held seats (lapsed
-- holds included, so that the division holds at any instant) plus an even share of the rest.
create or replace function private.reallot_tier_for_capacity_change()
returns trigger
language plpgsql set search_path = ''
as $$
begin
  perform private.lock_tier_capacity(new.id);
  perform private.reallot_tier(new.id, new.capacity,
    (select array_agg(c.paid_seats + c.held_seats order by c.shard) from private.tier_capacity c
     where c.tier_id = new.id), 0, 0);
  return new;
end;
$$;
create trigger ticket_tiers_capacity_lock before update of capacity on events.ticket_tiers
  for each row when (old.capacity is distinct from new.capacity)
  execute function private.reallot_tier_for_capacity_change();

-- Adds seats to one shard of a tier's counter, which locks it (callers go in tier id order).
create or replace function private.add_tier_seats(p_tier_id uuid, p_shard integer, p_paid bigint, p_held bigint)
returns void
language plpgsql volatile set search_path = ''
as $$
begin
  update private.tier_capacity c
  set paid_seats = c.paid_seats + p_paid, held_seats = c.held_seats + p_held
  where c.tier_id = p_tier_id and c.shard = p_shard;
end;
$$;

-- New order items count at once: a pending order's seats are held, a paid order's sold, each
-- on its order's shard. One statement may insert one item (a claim) or millions (a bulk load):
-- the rows are walked in tier and shard order with statements planned once per session, and
-- each shard's counter is updated once per statement (the same row updated again and again in
-- one transaction gets slower each time). A claim has already locked those shards, in tier
-- id order.
create or replace function private.count_new_order_items()
returns trigger
language plpgsql set search_path = ''
as $$
declare
  v_item record;
  v_tier uuid;
  v_shard integer;
  v_paid bigint := 0;
  v_held bigint := 0;
begin
  for v_item in
    select x.* from (
      select i.order_id, i.tier_id, i.quantity, o.status, o.seats_held_until, i.shard,
             private.order_capacity_shard(i.order_id, c.shards) as order_shard
      from new_items i
      join public.orders o on o.id = i.order_id
      join private.tier_capacity c on c.tier_id = i.tier_id and c.shard = i.shard) x
    order by x.tier_id, x.shard
  loop
    if v_item.shard <> v_item.order_shard then
      raise exception using errcode = '23514', message = format(
        'Cannot add order item: order %s counts its seats of tier %s on shard %s, not %s',
        v_item.order_id, v_item.tier_id, v_item.order_shard, v_item.shard);
    end if;
    if v_tier is distinct from v_item.tier_id or v_shard is distinct from v_item.shard then
      if v_paid <> 0 or v_held <> 0 then
        perform private.add_tier_seats(v_tier, v_shard, v_paid, v_held);
      end if;
      v_tier := v_item.tier_id;
      v_shard := v_item.shard;
      v_paid := 0;
      v_held := 0;
    end if;
    if v_item.status = 'pending' then
      insert into private.seat_holds (order_id, tier_id, quantity, held_until, shard)
      values (v_item.order_id, v_item.tier_id, v_item.quantity, v_item.seats_held_until, v_item.shard);
      v_held := v_held + v_item.quantity;
    elsif v_item.status in ('paid', 'partially_refunded') then
      v_paid := v_paid + v_item.quantity;
    end if;
  end loop;
  if v_paid <> 0 or v_held <> 0 then
    perform private.add_tier_seats(v_tier, v_shard, v_paid, v_held);
  end if;
  return null;
end;
$$;
-- Except the one statement of a claim that counts its own items (create_checkout_order): it
-- sets private.items_counted_by to its transaction's id for that statement only, so a value
-- left in a session by mistake never matches another transaction.
create trigger order_items_count_new after insert on public.order_items
  referencing new table as new_items
  for each statement
  when (current_setting('private.items_counted_by', true) is distinct from pg_current_xact_id()::text)
  execute function private.count_new_order_items();

-- An order's status or seats_held_until changed (Stripe's word, a release, a renewal, an
-- operator): its holds and the counters follow, tier by tier in id order, each on the order's
-- shard of the tier.
create or replace function private.count_order_change()
returns trigger
language plpgsql set search_path = ''
as $$
declare
  v_item record;
  v_shard integer;
  v_was_held integer;
begin
  for v_item in
    select i.tier_id, i.quantity from public.order_items i where i.order_id = new.id order by i.tier_id
  loop
    v_shard := private.lock_order_shard(v_item.tier_id, new.id);
    v_was_held := null;
    delete from private.seat_holds h where h.order_id = new.id and h.tier_id = v_item.tier_id
    returning h.quantity into v_was_held;
    if new.status = 'pending' then
      insert into private.seat_holds (order_id, tier_id, quantity, held_until, shard)
      values (new.id, v_item.tier_id, v_item.quantity, new.seats_held_until, v_shard);
    end if;
    update private.tier_capacity c
    set paid_seats = c.paid_seats
                     + case when new.status in ('paid', 'partially_refunded') then v_item.quantity else 0 end
                     - case when old.status in ('paid', 'partially_refunded') then v_item.quantity else 0 end,
        held_seats = c.held_seats - coalesce(v_was_held, 0)
                     + case when new.status = 'pending' then v_item.quantity else 0 end
    where c.tier_id = v_item.tier_id and c.shard = v_shard;
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
  v_shard integer;
  v_was_held integer;
begin
  v_shard := private.lock_order_shard(old.tier_id, old.order_id);
  -- Read under the shard's lock: a payment applied meanwhile has moved the seats already.
  select o.status into v_status from public.orders o where o.id = old.order_id;
  delete from private.seat_holds h where h.order_id = old.order_id and h.tier_id = old.tier_id
  returning h.quantity into v_was_held;
  update private.tier_capacity c
  set paid_seats = c.paid_seats - case when v_status in ('paid', 'partially_refunded') then old.quantity else 0 end,
      held_seats = c.held_seats - coalesce(v_was_held, 0)
  where c.tier_id = old.tier_id and c.shard = v_shard;
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

-- TRUNCATE fires no row triggers: with every order item gone, every counter is zero (the
-- allotments stay: with nothing taken, each shard is within its share).
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
-- Operators: check, repair, and the job that bounds lapsed holds
-- ------------------------------------------------------------------------------------------

-- Every tier whose counter disagrees with its orders, recounted from the rows (a full scan:
-- run it when the database is quiet enough, never in a request). Empty means all agree.
--   paid_*: seats of paid orders; held_*: seats of pending orders still held at p_now (the
--   counted figures are the sums of the tier's shards);
--   stray_holds: hold rows that do not mirror their order (status, seats, held_until or shard).
-- Besides the figures, the shards: rows that do not match the tier's shards, seats counted on
-- a shard other than their order's, allotments that do not add up to the capacity (a tier left
-- without allotment by a capacity below its seats is not that), a shard taking more than its
-- allotment at p_now.
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
  with items as (
    select i.tier_id, i.quantity, o.status, o.seats_held_until, i.shard as item_shard,
           private.order_capacity_shard(i.order_id, k.shards) as shard
    from public.order_items i join public.orders o on o.id = i.order_id
    left join private.tier_capacity k on k.tier_id = i.tier_id and k.shard = 0
  ), recount as (
    select x.tier_id, x.shard,
           coalesce(sum(x.quantity) filter (where x.status in ('paid', 'partially_refunded')), 0) as paid,
           coalesce(sum(x.quantity) filter (where x.status = 'pending' and x.seats_held_until > p_now), 0) as held,
           count(*) filter (where x.item_shard is distinct from x.shard) as misfiled
    from items x
    group by x.tier_id, x.shard
  ), holds as (
    select h.tier_id, h.shard,
           sum(h.quantity) as listed,
           coalesce(sum(h.quantity) filter (where h.held_until <= p_now), 0) as lapsed,
           count(*) filter (where o.id is null or o.status <> 'pending'
                              or o.seats_held_until <> h.held_until or i.quantity <> h.quantity
                              or h.shard is distinct from private.order_capacity_shard(h.order_id, k.shards)) as stray
    from private.seat_holds h
    left join public.orders o on o.id = h.order_id
    left join public.order_items i on i.order_id = h.order_id and i.tier_id = h.tier_id
    left join private.tier_capacity k on k.tier_id = h.tier_id and k.shard = 0
    group by h.tier_id, h.shard
  ), shards as (
    select c.tier_id, c.shard, c.shards, c.allotted, c.paid_seats, c.held_seats,
           coalesce(r.paid, 0) as paid, coalesce(r.held, 0) as held,
           coalesce(hs.listed, 0) as listed, coalesce(hs.lapsed, 0) as lapsed
    from private.tier_capacity c
    left join recount r on r.tier_id = c.tier_id and r.shard = c.shard
    left join holds hs on hs.tier_id = c.tier_id and hs.shard = c.shard
  ), counters as (
    select s.tier_id, count(*) as shard_rows, min(s.shards) as shards, max(s.shards) as max_shards,
           sum(s.paid_seats) as paid_seats, sum(s.held_seats) as held_seats,
           sum(s.allotted) as allotted, count(*) filter (where s.allotted is null) as unallotted,
           bool_and(s.allotted = 0) as no_allotment,
           count(*) filter (where s.paid_seats <> s.paid or s.held_seats - s.lapsed <> s.held
                              or s.held_seats <> s.listed) as misplaced,
           count(*) filter (where s.paid_seats + s.held_seats - s.lapsed > s.allotted) as over_allotment
    from shards s
    group by s.tier_id
  ), tier_recount as (
    select r.tier_id, sum(r.paid) as paid, sum(r.held) as held, sum(r.misfiled) as misfiled
    from recount r group by r.tier_id
  ), tier_holds as (
    select h.tier_id, sum(h.listed) as listed, sum(h.lapsed) as lapsed, sum(h.stray) as stray
    from holds h group by h.tier_id
  ), compared as (
    select t.id as tier_id, t.capacity, c.tier_id is not null as has_counter,
           c.paid_seats as paid_counted, coalesce(r.paid, 0)::bigint as paid_recounted,
           (c.held_seats - coalesce(hs.lapsed, 0))::bigint as held_counted,
           coalesce(r.held, 0)::bigint as held_recounted,
           c.held_seats as held_seats, coalesce(hs.listed, 0)::bigint as held_listed,
           coalesce(hs.stray, 0)::bigint as stray_holds, coalesce(r.misfiled, 0) as misfiled_items,
           c.shard_rows, c.shards, c.max_shards, c.allotted, c.unallotted, c.no_allotment, c.misplaced,
           c.over_allotment
    from events.ticket_tiers t
    left join counters c on c.tier_id = t.id
    left join tier_recount r on r.tier_id = t.id
    left join tier_holds hs on hs.tier_id = t.id
  ), judged as (
    select x.*,
           concat_ws('; ',
             case when not x.has_counter then 'no counter row' end,
             case when x.has_counter and (x.shard_rows <> x.shards or x.shards <> x.max_shards)
                  then 'counter rows do not match the tier''s shards' end,
             case when x.paid_counted <> x.paid_recounted then 'paid seats differ' end,
             case when x.held_seats <> x.held_listed then 'held_seats differs from its hold rows' end,
             case when x.held_counted <> x.held_recounted then 'held seats differ' end,
             case when x.stray_holds > 0 then 'hold rows disagree with their orders' end,
             case when x.misfiled_items > 0 then 'order items name another shard than their order''s' end,
             case when x.paid_counted = x.paid_recounted and x.held_seats = x.held_listed
                       and x.held_counted = x.held_recounted and x.misplaced > 0
                  then 'seats counted on the wrong shard' end,
             case when x.has_counter
                       and (case when x.capacity is null then x.unallotted < x.shard_rows
                                 else x.unallotted > 0
                                      or (x.allotted <> x.capacity and not (x.shards > 1 and x.no_allotment)) end)
                  then 'allotments do not add up to the capacity' end,
             case when x.capacity is not null and x.shards > 1 and not x.no_allotment and x.over_allotment > 0
                  then 'a shard takes more than its allotment' end) as problem
    from compared x
  )
  select j.tier_id, j.capacity, j.paid_counted, j.paid_recounted, j.held_counted, j.held_recounted,
         j.held_listed, j.stray_holds, j.problem
  from judged j
  where j.problem <> ''
  order by j.tier_id;
$$;
comment on function public.check_tier_capacity(timestamptz) is
  'Operators: tiers whose capacity counter disagrees with their orders, recounted from the rows; empty when all agree.';

-- Rebuilds one tier's holds and counter from its orders, under all the tier's shard locks, and
-- divides its capacity among the shards again. Returns the seats taken at p_now afterwards. For
-- a tier check_tier_capacity reported.
create or replace function public.repair_tier_capacity(p_tier_id uuid, p_now timestamptz default now())
returns bigint
language plpgsql volatile set search_path = ''
as $$
declare
  v_shards integer := private.tier_shards(p_tier_id);
begin
  if v_shards is null then
    return 0; -- no such tier
  end if;
  perform private.lock_tier_capacity(p_tier_id);
  -- Items loaded with triggers off may name another shard than their order's.
  update public.order_items i set shard = private.order_capacity_shard(i.order_id, v_shards)
  where i.tier_id = p_tier_id and i.shard <> private.order_capacity_shard(i.order_id, v_shards);
  delete from private.seat_holds h where h.tier_id = p_tier_id;
  insert into private.seat_holds (order_id, tier_id, quantity, held_until, shard)
  select i.order_id, i.tier_id, i.quantity, o.seats_held_until, private.order_capacity_shard(i.order_id, v_shards)
  from public.order_items i join public.orders o on o.id = i.order_id
  where i.tier_id = p_tier_id and o.status = 'pending'
    and o.seats_held_until > p_now;
  with paid as (
    select private.order_capacity_shard(i.order_id, v_shards) as shard, sum(i.quantity) as seats
    from public.order_items i join public.orders o on o.id = i.order_id
    where i.tier_id = p_tier_id and o.status in ('paid', 'partially_refunded')
    group by 1
  ), held as (
    select h.shard, sum(h.quantity) as seats from private.seat_holds h where h.tier_id = p_tier_id group by 1
  )
  update private.tier_capacity c
  set paid_seats = coalesce((select p.seats from paid p where p.shard = c.shard), 0),
      held_seats = coalesce((select h.seats from held h where h.shard = c.shard), 0)
  where c.tier_id = p_tier_id;
  perform private.reallot_tier(p_tier_id, (select t.capacity from events.ticket_tiers t where t.id = p_tier_id),
    (select array_agg(c.paid_seats + c.held_seats order by c.shard) from private.tier_capacity c
     where c.tier_id = p_tier_id), 0, 0);
  return private.tier_seats_taken(p_tier_id, p_now);
end;
$$;
comment on function public.repair_tier_capacity(uuid, timestamptz) is
  'Operators: rebuilds one tier''s holds, counter and allotments from its orders, under the tier''s locks.';

-- Deletes holds whose seats_held_until passed before p_now (their seats already stopped counting
-- then) and takes them off their shards' held_seats, tier by tier in id order and shard by
-- shard, each under its lock. The orders stay pending: only Stripe says how a session ended.
-- What this bounds is the work of a claim, which reads the lapsed holds of its tier until they
-- are gone. Returns how many holds it deleted. Run by pg_cron every 15 minutes.
create or replace function public.release_lapsed_seat_holds(p_now timestamptz default now())
returns bigint
language plpgsql volatile set search_path = ''
as $$
declare
  v_shard record;
  v_deleted bigint := 0;
  v_count bigint;
  v_seats bigint;
begin
  for v_shard in
    select distinct h.tier_id, h.shard from private.seat_holds h where h.held_until < p_now
    order by h.tier_id, h.shard
  loop
    perform private.lock_tier_shard(v_shard.tier_id, v_shard.shard);
    with gone as (
      delete from private.seat_holds h
      where h.tier_id = v_shard.tier_id and h.shard = v_shard.shard and h.held_until < p_now
      returning h.quantity
    )
    select count(*), coalesce(sum(g.quantity), 0) into v_count, v_seats from gone g;
    update private.tier_capacity c set held_seats = c.held_seats - v_seats
    where c.tier_id = v_shard.tier_id and c.shard = v_shard.shard;
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

