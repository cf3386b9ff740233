-- Events and ticket tiers: what the storefront sells and at which price.
-- Objects: schema events; tables events.events, events.ticket_tiers; helper trigger
--          function private.set_updated_at(); deny-by-default privileges for new functions.
-- Risks:   prices live only here (checkout never trusts a client's price); the column names
--          are a contract with the rest of the platform, so rename nothing.

-- Deny by default (on hosted projects the platform's defaults also grant new functions in public
-- to anon and authenticated): nothing created from now on is callable by them unless granted.
alter default privileges in schema public revoke execute on functions from anon, authenticated;

create schema if not exists events;
alter default privileges in schema events revoke execute on functions from anon, authenticated;
grant usage on schema events to anon, authenticated, service_role;

-- Keeps updated_at honest without trusting callers to set it.
create or replace function private.set_updated_at()
returns trigger
language plpgsql set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;
comment on function private.set_updated_at() is 'Trigger: stamps updated_at on every update.';

create table events.events (
  id uuid primary key default gen_random_uuid(),
  title text not null check (length(btrim(title)) between 1 and 200),
  currency text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
  status text not null default 'draft' check (status in ('draft', 'published', 'cancelled')),
  starts_at timestamptz,
  idempotency_key text unique check (length(idempotency_key) between 1 and 255),
  -- Set once by cancel_event: from then on nothing is sold and every payment is given back.
  cancelled_at timestamptz,
  cancellation_reason text check (length(cancellation_reason) <= 500),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check ((status = 'cancelled') = (cancelled_at is not null))
);
comment on table events.events is 'The platform''s events; only published ones can be sold.';
comment on column events.events.currency is 'ISO 4217 code, lowercase as Stripe expects it.';
comment on column events.events.idempotency_key is 'Makes event creation idempotent: a retried create finds its row.';

create table events.ticket_tiers (
  id uuid primary key default gen_random_uuid(),
  event_id uuid not null references events.events (id) on delete cascade,
  name text not null check (length(btrim(name)) between 1 and 200),
  unit_amount integer not null check (unit_amount >= 0),
  capacity integer check (capacity >= 0),
  max_per_order integer not null default 10 check (max_per_order between 1 and 100),
  sales_start_at timestamptz,
  sales_end_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check (sales_end_at is null or sales_start_at is null or sales_end_at > sales_start_at)
);
comment on table events.ticket_tiers is 'Priced ticket categories of an event; the only source of checkout prices.';
comment on column events.ticket_tiers.unit_amount is 'Price of one ticket in the currency''s minor units.';
comment on column events.ticket_tiers.capacity is 'Seats in this tier; null means unlimited.';
create index ticket_tiers_event_id_idx on events.ticket_tiers (event_id);

create trigger events_set_updated_at before update on events.events
  for each row execute function private.set_updated_at();
create trigger ticket_tiers_set_updated_at before update on events.ticket_tiers
  for each row execute function private.set_updated_at();

alter table events.events enable row level security;
alter table events.ticket_tiers enable row level security;

-- The catalogue is public: anyone may read published events and their tiers. Writes are
-- the platform's (service_role) only. Revoke first: older projects grant every new table to
-- anon and authenticated by default, and nothing here may rely on that default either way.
revoke all on events.events, events.ticket_tiers from anon, authenticated;
grant select on events.events, events.ticket_tiers to anon, authenticated;
grant select, insert, update, delete on events.events, events.ticket_tiers to service_role;

create policy "published events are public" on events.events
  for select to anon, authenticated
  using (status = 'published');

create policy "tiers of published events are public" on events.ticket_tiers
  for select to anon, authenticated
  using (exists (
    select 1 from events.events e where e.id = event_id and e.status = 'published'
  ));
