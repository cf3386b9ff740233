-- Stripe webhook events, stored once per Stripe event id.
-- Objects: public.stripe_webhook_events.
-- Risks:   the unique event id is what makes redeliveries harmless; processing state
--          (processed_at, attempts, last_error) lets a failed event be retried by Stripe.

create table public.stripe_webhook_events (
  id bigint generated always as identity primary key,
  stripe_event_id text not null unique check (stripe_event_id ~ '^evt_[A-Za-z0-9_]+$'),
  type text not null check (length(type) between 1 and 200),
  livemode boolean not null default false,
  payload jsonb not null,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  attempts integer not null default 0 check (attempts >= 0),
  last_error text
);
comment on table public.stripe_webhook_events is 'One row per Stripe event id; a redelivered event finds its row and is not processed twice.';
comment on column public.stripe_webhook_events.processed_at is 'Null until the event was applied; a failed event stays null so Stripe''s redelivery retries it.';
create index stripe_webhook_events_unprocessed_idx on public.stripe_webhook_events (received_at)
  where processed_at is null;

alter table public.stripe_webhook_events enable row level security;
-- Service only: RLS on, no policies, no grants to anon or authenticated.
revoke all on public.stripe_webhook_events from anon, authenticated;
grant select, insert, update, delete on public.stripe_webhook_events to service_role;
