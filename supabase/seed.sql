-- Demo data for local runs (applied by `supabase db push --include-seed` or `supabase db reset`).
-- Fixed ids so the README, curl examples and tests can name them. Safe to run twice.

insert into events.events (id, title, currency, status, starts_at, idempotency_key)
values (
  '00000000-0000-4000-8000-000000000001',
  'Supabase Summit Demo Night',
  'usd',
  'published',
  '2027-03-14 19:00:00+00',
  'seed:event:demo-night'
)
on conflict (id) do nothing;

insert into events.ticket_tiers (id, event_id, name, unit_amount, capacity, max_per_order)
values
  ('00000000-0000-4000-8000-000000000101', '00000000-0000-4000-8000-000000000001',
   'General admission', 2500, 200, 10),
  ('00000000-0000-4000-8000-000000000102', '00000000-0000-4000-8000-000000000001',
   'VIP', 9900, 20, 4),
  ('00000000-0000-4000-8000-000000000103', '00000000-0000-4000-8000-000000000001',
   'Livestream', 0, null, 1)
on conflict (id) do nothing;
