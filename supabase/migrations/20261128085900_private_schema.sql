-- The private schema: the internals behind the API functions in public.
-- Objects: schema private and its default privileges.
-- Risks:   private is not exposed to the Data API (config.toml lists only public and events), and
--          anon and authenticated have no usage on it, so nothing in it can be reached by them
--          whatever a function's own grants: this schema-wide gate is the one grant for all its
--          functions, none of which repeats a revoke/grant pair. The API functions in public
--          run as their caller (service_role), which may use it.

create schema if not exists private;
comment on schema private is 'Internals of the public API functions; not exposed, service_role only.';
revoke all on schema private from public, anon, authenticated;
grant usage on schema private to service_role;
alter default privileges in schema private grant execute on functions to service_role;

-- A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then random bits.
-- Order ids use it so that a new order's index entries (orders, order_items, seat_holds) land
-- on the rightmost B-tree pages: with random (v4) ids every insert dirties some page of a large
-- index, and after each checkpoint writes that whole page to the WAL again (15 KB of WAL per
-- checkout at a million orders against 3.6 KB on an empty database). It reveals when the order
-- was made, which its buyer and the operators know anyway. PostgreSQL 18 has uuidv7() built in.
create or replace function private.uuid_v7()
returns uuid
language plpgsql volatile set search_path = ''
as $$
declare
  v_random bytea := uuid_send(gen_random_uuid()); -- random, with the RFC variant bits set
begin
  -- One expression (each PL/pgSQL statement is set up again in every transaction, and every
  -- order's id is made here): the 48-bit Unix time in ms in front, version 7 in byte 6.
  return encode(set_byte(
    overlay(v_random placing substring(int8send(floor(date_part('epoch', clock_timestamp()) * 1000)::bigint) from 3)
            from 1 for 6),
    6, (get_byte(v_random, 6) & 15) | 112), 'hex')::uuid;
end;
$$;
comment on function private.uuid_v7() is 'A version 7 (time-ordered) UUID: index inserts stay on the rightmost pages.';

-- What a table's rules function (a CHECK calling one PL/pgSQL function instead of many CHECK
-- constraints, see private.order_rules) raises for the rule a row breaks: check_violation,
-- with the table and its rules constraint named as a CHECK's error would name them. Volatile,
-- though the rules functions calling it are immutable: an immutable call with constant
-- arguments would be folded (raised) when their expression is planned.
create or replace function private.rule_broken(p_table text, p_rule text)
returns boolean
language plpgsql volatile set search_path = ''
as $$
begin
  raise exception using errcode = 'check_violation',
    message = format('new row for relation "%s" violates check constraint "%s_rules"', p_table, p_table),
    detail = format('Rule: %s.', p_rule), table = p_table, constraint = p_table || '_rules';
end;
$$;
comment on function private.rule_broken(text, text) is
  'Internal: raises check_violation (23514) for a broken rule of a table''s rules function.';
