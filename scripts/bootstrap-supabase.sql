-- scripts/bootstrap-supabase.sql
--
-- LOCAL / CI ONLY. NEVER APPLY THIS TO A HOSTED SUPABASE PROJECT.
--
-- Gives a plain PostgreSQL 15 the pieces that the hosted Supabase image
-- already has, so that supabase/migrations can be pushed to a throwaway
-- cluster exactly as an operator pushes them to production:
--   roles     anon, authenticated, service_role, authenticator, supabase_admin
--   schemas   extensions (pgcrypto), auth (users, uid(), role(), jwt())
--   grants    usage on public/auth/extensions; hosted default privileges
--
-- It lives outside supabase/migrations on purpose: `supabase db push` must
-- never send it to a hosted project, where these objects already exist and
-- belong to Supabase.
--
-- Idempotent: safe to run any number of times (scripts/test.sh runs it once
-- per cluster; running it twice is part of its contract).
-- Run as a superuser: psql "$DB_URL" -v ON_ERROR_STOP=1 -q -f scripts/bootstrap-supabase.sql

set client_min_messages = warning;  -- keep re-runs quiet (already-exists NOTICEs)

-- ---------------------------------------------------------------- roles
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'supabase_admin') then
    create role supabase_admin login createrole createdb bypassrls;
  end if;
end
$$;

-- Re-assert the attributes in case a role pre-existed with other ones.
alter role anon nologin noinherit;
alter role authenticated nologin noinherit;
alter role service_role nologin noinherit bypassrls;
alter role authenticator login noinherit;
alter role supabase_admin login createrole createdb bypassrls;

-- GRANT of a role that is already granted only emits a NOTICE: idempotent.
grant anon, authenticated, service_role to authenticator;

-- `set role anon` etc. in tests run as postgres. Guarded: on a server reached
-- through TEST_DATABASE_URL the role postgres may not exist.
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'postgres') then
    grant anon, authenticated, service_role to postgres;
  end if;
end
$$;

-- ----------------------------------------------------------- extensions
create schema if not exists extensions;
create extension if not exists pgcrypto with schema extensions;

grant usage on schema extensions to anon, authenticated, service_role;

-- ----------------------------------------------------------------- auth
-- Owned by supabase_admin: `supabase db reset` drops every non-system schema
-- that supabase_admin does not own.
create schema if not exists auth authorization supabase_admin;
alter schema auth owner to supabase_admin;

create table if not exists auth.users (
  id         uuid primary key default gen_random_uuid(),
  email      text,
  created_at timestamptz default now()
);
alter table auth.users owner to supabase_admin;

-- Same logic as Supabase's auth.uid()/role()/jwt(): prefer the JSON claims
-- in request.jwt.claims, fall back to the older per-claim settings.
create or replace function auth.stand_in_claim(p_name text)
returns text
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(pg_catalog.current_setting('request.jwt.claim.' || p_name, true), ''),
    (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> p_name)
  )
$$;

create or replace function auth.uid()
returns uuid
language sql stable
set search_path = ''
as $$ select auth.stand_in_claim('sub')::uuid $$;

create or replace function auth.role()
returns text
language sql stable
set search_path = ''
as $$ select auth.stand_in_claim('role') $$;

create or replace function auth.jwt()
returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb,
    nullif(
      pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'sub',  nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
        'role', nullif(pg_catalog.current_setting('request.jwt.claim.role', true), '')
      )),
      '{}'::jsonb
    )
  )
$$;

alter function auth.stand_in_claim(text) owner to supabase_admin;
alter function auth.uid() owner to supabase_admin;
alter function auth.role() owner to supabase_admin;
alter function auth.jwt() owner to supabase_admin;

grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.stand_in_claim(text), auth.uid(), auth.role(), auth.jwt()
  to anon, authenticated, service_role;

-- --------------------------------------------------------------- public
grant usage on schema public to anon, authenticated, service_role;

-- Hosted Supabase grants the API roles table/sequence/function privileges on
-- everything postgres creates in public, and relies on RLS to restrict rows.
-- Mirror that, so a table without RLS is as exposed here as it is in
-- production (tests must not pass only because a grant is missing locally).
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'postgres') then
    alter default privileges for role postgres in schema public
      grant all on tables to anon, authenticated, service_role;
    alter default privileges for role postgres in schema public
      grant all on sequences to anon, authenticated, service_role;
    alter default privileges for role postgres in schema public
      grant all on functions to anon, authenticated, service_role;
  end if;
end
$$;
