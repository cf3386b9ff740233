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
