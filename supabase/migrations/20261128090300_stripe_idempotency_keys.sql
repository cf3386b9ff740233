-- Exactly-once Stripe calls: one row per logical Stripe operation, and the protocol around it.
-- Objects: public.stripe_idempotency_keys; type public.stripe_idempotency_claim; functions
--          claim_stripe_idempotency (with stripe_idempotency_settled), check_stripe_idempotency,
--          record_stripe_idempotency, release_stripe_idempotency, cleanup_expired_idempotency_keys
--          (with cleanup_expired_idempotency_keys_batch, private.cleanup_idempotency_batch and
--          private.cleanup_pause); procedure run_cleanup_expired_idempotency_keys (pg_cron's,
--          committing per batch).
-- Protocol: claim (one statement: insert, or lock and classify the existing row) → call Stripe
--          with the returned key → record (only the lease holder) or release (key kept when
--          Stripe gave no answer, burnt when it did).
-- Risks:   every function is service_role only. A key is never reused with other parameters:
--          the fingerprint gate runs before any outcome that could hand out a key.
-- Errors:  P0002 no such operation; 22023 bad argument; SI001 caller does not hold the lease
--          (fenced); SI002 the operation is already completed with another result.

create table public.stripe_idempotency_keys (
  id bigint generated always as identity primary key,
  -- resource:verb (checkout:create, refund:create): see private.idempotency_key_rules.
  operation_type text not null,
  operation_id text not null,
  stripe_idempotency_key text not null unique,
  request_fingerprint text not null,
  status text not null default 'in_progress', -- in_progress | completed | failed
  lease_token uuid,
  lease_expires_at timestamptz,
  attempt integer not null default 1,
  -- How many times reconciliation took this attempt over without settling it (bounded).
  reconcile_attempts integer not null default 0,
  stripe_resource_id text,
  response_status integer,
  response_body jsonb,
  -- The order the operation acts for (checkout: the order its current session sells). Deferred:
  -- a claim arms the operation before it writes the order, in the same transaction.
  order_id uuid references public.orders (id) on delete set null deferrable initially deferred,
  metadata jsonb not null default '{}'::jsonb,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  expires_at timestamptz not null default now() + interval '24 hours',
  constraint stripe_idempotency_keys_operation_unique unique (operation_type, operation_id)
  -- The row's rules: private.idempotency_key_rules below (constraint stripe_idempotency_keys_rules).
);

-- The rules every row keeps, as one CHECK calling one function, for the reason given at
-- private.order_rules (a claim and a record each write this table once). Each rule is named
-- as the constraint that held it before. Null holds, as in a CHECK. A migration that drops or
-- renames a column it reads must replace it in the same migration.
create or replace function private.idempotency_key_rules(k public.stripe_idempotency_keys)
returns boolean
language plpgsql immutable set search_path = ''
as $$
begin
  return case
    when (length(k.operation_type) <= 64 and k.operation_type ~ '^[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)+$') is false
      then private.rule_broken('stripe_idempotency_keys', 'operation_type_format: resource:verb, at most 64 characters')
    -- Length apart from the pattern: a bounded repeat ({1,150}) costs 23 µs a match, + 1 µs.
    when (length(k.operation_id) between 1 and 150 and k.operation_id ~ '^[A-Za-z0-9_.-]+$') is false
      then private.rule_broken('stripe_idempotency_keys', 'operation_id_format: 1 to 150 of A-Z a-z 0-9 _ . -')
    -- The Stripe key names its own operation: operation_type:operation_id:uuid. Hex digits are
    -- matched by translating them all to 0 and comparing with the shape: the same test as the
    -- bounded regexes ([0-9a-f]{8}-…, [0-9a-f]{64}), which cost 2.5 and 5.6 µs a match here.
    when (length(k.stripe_idempotency_key) <= 255
          and translate(right(k.stripe_idempotency_key, 36), '123456789abcdef', '000000000000000')
              = '00000000-0000-0000-0000-000000000000'
          and k.stripe_idempotency_key = k.operation_type || ':' || k.operation_id || ':' || right(k.stripe_idempotency_key, 36)) is false
      then private.rule_broken('stripe_idempotency_keys', 'key_shape: operation_type:operation_id:uuid, at most 255 characters')
    when (translate(k.request_fingerprint, '123456789abcdef', '000000000000000') = repeat('0', 64)) is false
      then private.rule_broken('stripe_idempotency_keys', 'fingerprint_format: a sha256 hex digest')
    when (k.status in ('in_progress', 'completed', 'failed')) is false
      then private.rule_broken('stripe_idempotency_keys', 'status: in_progress, completed or failed')
    when (k.attempt >= 1 and k.reconcile_attempts >= 0) is false
      then private.rule_broken('stripe_idempotency_keys', 'attempt is at least 1, reconcile_attempts at least 0')
    when (length(k.stripe_resource_id) <= 255) is false
      then private.rule_broken('stripe_idempotency_keys', 'stripe_resource_id has at most 255 characters')
    when (k.response_status between 100 and 599) is false
      then private.rule_broken('stripe_idempotency_keys', 'response_status is an HTTP status')
    when (jsonb_typeof(k.metadata) = 'object') is false
      then private.rule_broken('stripe_idempotency_keys', 'metadata is a JSON object')
    when (k.status <> 'in_progress' or (k.lease_token is not null and k.lease_expires_at is not null)) is false
      then private.rule_broken('stripe_idempotency_keys', 'in_progress_has_lease')
    when (k.status <> 'completed' or (k.response_status is not null and k.response_body is not null)) is false
      then private.rule_broken('stripe_idempotency_keys', 'completed_has_response')
    else true
  end;
end;
$$;
comment on function private.idempotency_key_rules(public.stripe_idempotency_keys) is
  'The CHECK rules of an idempotency row (constraint stripe_idempotency_keys_rules); raises 23514 naming the rule broken.';
alter table public.stripe_idempotency_keys
  add constraint stripe_idempotency_keys_rules check (private.idempotency_key_rules(stripe_idempotency_keys));
comment on table public.stripe_idempotency_keys is
  'One row per logical Stripe operation: the Stripe Idempotency-Key it uses, who holds the attempt in flight, and the response to replay.';
comment on column public.stripe_idempotency_keys.operation_id is 'The stable id of the operation (for checkout: the client''s Idempotency-Key).';
comment on column public.stripe_idempotency_keys.stripe_idempotency_key is 'Sent to Stripe as Idempotency-Key: operation_type:operation_id:uuid. A new uuid only after Stripe answered a failed attempt.';
comment on column public.stripe_idempotency_keys.request_fingerprint is 'sha256 (hex) of the canonical request including who made it; another request under the same operation is rejected.';
comment on column public.stripe_idempotency_keys.lease_token is 'Owner token of the attempt in flight; only its holder may record or release (fencing).';
comment on column public.stripe_idempotency_keys.response_body is 'The body the endpoint returned, so that a replay returns exactly the same response.';
comment on column public.stripe_idempotency_keys.expires_at is 'When cleanup may delete the row: at least 24 hours (Stripe''s key retention) after its last key was armed.';
-- Cleanup walks rows by expiry.
create index stripe_idempotency_keys_expires_at_idx on public.stripe_idempotency_keys (expires_at);
-- An order's operation (the webhook finds it this way before it locks the order). Over every
-- row, nulls included: limited to rows with an order, it looked empty to a planner whose
-- statistics were taken while few rows had one (after a bulk load of old operations), and the
-- replay read, which joins the order by this column, walked all of it instead of finding the
-- operation by its key (15 ms a claim with 20,000 checkouts on a scratch cluster).
create index stripe_idempotency_keys_order_id_idx on public.stripe_idempotency_keys (order_id);

alter table public.stripe_idempotency_keys enable row level security;
-- Service only: RLS on, no policies, nothing granted to anon or authenticated.
revoke all on public.stripe_idempotency_keys from anon, authenticated;
grant select, insert, update, delete on public.stripe_idempotency_keys to service_role;

create type public.stripe_idempotency_claim as (
  -- created | replay | conflict | takeover | retry | mismatch
  outcome text,
  stripe_idempotency_key text,
  lease_token uuid,
  lease_expires_at timestamptz,
  attempt integer,
  stripe_resource_id text,
  response_status integer,
  response_body jsonb,
  metadata jsonb,
  order_id uuid
);
comment on type public.stripe_idempotency_claim is 'What claim_stripe_idempotency decided; fields that do not belong to the caller are null.';

-- Arms a new attempt on an existing row: a new lease for p_lease_token, the key replaced by
-- p_new_key (null keeps the key: a takeover must reach Stripe with the SAME key), any previous
-- response cleared, and the row kept for 24 hours (Stripe's key retention) from now. Every path
-- that hands an existing operation to a new attempt goes through here; the caller holds the
-- row's lock.
create or replace function private.arm_stripe_idempotency_attempt(
  p_id bigint,
  p_new_key text,
  p_lease_token uuid,
  p_lease_until timestamptz,
  p_now timestamptz
)
returns public.stripe_idempotency_keys
language sql volatile set search_path = ''
as $$
  update public.stripe_idempotency_keys k
  set stripe_idempotency_key = coalesce(p_new_key, k.stripe_idempotency_key),
      status = 'in_progress',
      lease_token = p_lease_token,
      lease_expires_at = p_lease_until,
      attempt = k.attempt + 1,
      stripe_resource_id = null,
      response_status = null,
      response_body = null,
      updated_at = p_now,
      expires_at = greatest(k.expires_at, p_now + interval '24 hours')
  where k.id = p_id
  returning k.*;
$$;
comment on function private.arm_stripe_idempotency_attempt(bigint, text, uuid, timestamptz, timestamptz) is
  'Internal: hands an existing operation to a new attempt (new lease; new key, or the same one).';

-- What a claim tells its caller about a row: the outcome, the key, the stored response, and the
-- lease only when the caller now holds it.
create or replace function private.claim_of(p_outcome text, p_row public.stripe_idempotency_keys)
returns public.stripe_idempotency_claim
language plpgsql immutable set search_path = ''
as $$
declare
  v_armed boolean := p_outcome in ('created', 'takeover', 'retry');
begin
  -- PL/pgSQL, not SQL: a SQL function with a pinned search_path is never inlined and is planned
  -- again on every call, and this one is on every claim's path.
  return row(p_outcome, p_row.stripe_idempotency_key,
             case when v_armed then p_row.lease_token end,
             case when v_armed or p_outcome = 'conflict' then p_row.lease_expires_at end,
             p_row.attempt, p_row.stripe_resource_id, p_row.response_status, p_row.response_body,
             p_row.metadata, p_row.order_id)::public.stripe_idempotency_claim;
end;
$$;

-- The outcomes an existing row decides by itself: mismatch, replay, or conflict (a live lease).
-- Null outcome when the row must be taken over or retried, which only the row lock may do.
create or replace function private.stripe_idempotency_settled(
  p_row public.stripe_idempotency_keys,
  p_request_fingerprint text,
  p_now timestamptz
)
returns public.stripe_idempotency_claim
language plpgsql immutable set search_path = ''
as $$
declare
  v_result public.stripe_idempotency_claim;
begin
  if p_row.request_fingerprint is distinct from p_request_fingerprint then
    v_result.outcome := 'mismatch';
  elsif p_row.status = 'completed' then
    v_result := private.claim_of('replay', p_row);
  elsif p_row.status = 'in_progress' and p_row.lease_expires_at > p_now then
    v_result.outcome := 'conflict';
    v_result.lease_expires_at := p_row.lease_expires_at;
    v_result.attempt := p_row.attempt;
  end if;
  return v_result;
end;
$$;
comment on function private.stripe_idempotency_settled(public.stripe_idempotency_keys, text, timestamptz) is
  'Internal to claim_stripe_idempotency: mismatch | replay | conflict decided from a row, or a null outcome.';

-- The atomic claim. One call either arms a new attempt for the caller or tells it what exists:
--   created  — new row, in progress, leased to the caller, with the caller's key;
--   replay   — completed: the stored response is returned;
--   conflict — another attempt holds a live lease (lease_expires_at says until when);
--   takeover — the previous attempt's lease expired: the caller gets a new lease and the SAME key,
--              so Stripe answers a repeated create with the object it already made;
--   retry    — the previous attempt failed after Stripe answered: the caller's new key replaces it;
--   mismatch — the operation exists with another request fingerprint: nothing is revealed.
-- No check-then-insert race: the insert arbitrates on the unique (operation_type, operation_id),
-- and an existing row is classified under its row lock. Only outcomes that read an immutable
-- fact (a completed response, a fingerprint, a live lease at this instant) skip the lock.
create or replace function public.claim_stripe_idempotency(
  p_operation_type text,
  p_operation_id text,
  p_stripe_idempotency_key text,
  p_request_fingerprint text,
  p_lease_token uuid,
  p_lease_seconds integer default 60,
  p_metadata jsonb default '{}'::jsonb,
  p_now timestamptz default now(),
  -- The order a new operation is for; an existing operation keeps its own.
  p_order_id uuid default null
)
returns public.stripe_idempotency_claim
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
  v_result public.stripe_idempotency_claim;
  v_lease_until timestamptz;
begin
  if p_lease_token is null or p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
    raise exception using errcode = '22023', message = format(
      'Cannot claim operation: a lease token and a lease of 1..3600 seconds are required (got %s)', p_lease_seconds);
  end if;
  v_lease_until := p_now + make_interval(secs => p_lease_seconds);

  -- Fast path, without locks or writes: a replay, a mismatch or a live conflict is decided from
  -- a plain read. Completed rows never change their response and a fingerprint never changes,
  -- so the statement's snapshot is a consistent answer; a retry storm on one completed
  -- operation then neither queues on its row lock nor waits for a WAL flush.
  select k.* into v_row
  from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  if found then
    v_result := private.stripe_idempotency_settled(v_row, p_request_fingerprint, p_now);
    if v_result.outcome is not null then
      return v_result;
    end if;
  end if;

  -- Slow path: insert, or lock the existing row and classify it under the lock.
  loop
    insert into public.stripe_idempotency_keys as k (
      operation_type, operation_id, stripe_idempotency_key, request_fingerprint, status,
      lease_token, lease_expires_at, metadata, order_id, created_at, updated_at, expires_at
    ) values (
      p_operation_type, p_operation_id, p_stripe_idempotency_key, p_request_fingerprint, 'in_progress',
      p_lease_token, v_lease_until, coalesce(p_metadata, '{}'::jsonb), p_order_id, p_now, p_now,
      p_now + interval '24 hours'
    )
    on conflict (operation_type, operation_id) do nothing
    returning k.* into v_row;

    if found then
      v_result.outcome := 'created';
      exit;
    end if;

    select k.* into v_row
    from public.stripe_idempotency_keys k
    where k.operation_type = p_operation_type and k.operation_id = p_operation_id
    for update;

    -- Deleted by cleanup between our insert and our select: insert again.
    continue when not found;

    v_result := private.stripe_idempotency_settled(v_row, p_request_fingerprint, p_now);
    if v_result.outcome is not null then
      return v_result;
    end if;

    -- An expired lease: same key, new owner, the old owner fenced off by the token change
    -- (takeover). Failed after Stripe answered: Stripe replays that answer for the old key, so the
    -- caller's new key replaces it (retry).
    v_result.outcome := case when v_row.status = 'in_progress' then 'takeover' else 'retry' end;
    v_row := private.arm_stripe_idempotency_attempt(v_row.id,
      case when v_result.outcome = 'retry' then p_stripe_idempotency_key end, p_lease_token, v_lease_until, p_now);
    exit;
  end loop;

  return private.claim_of(v_result.outcome, v_row);
end;
$$;
comment on function public.claim_stripe_idempotency(text, text, text, text, uuid, integer, jsonb, timestamptz, uuid) is
  'Atomic claim of a Stripe operation: created | replay | conflict | takeover | retry | mismatch, in one statement.';

-- The completed record of an operation, if any.
create or replace function public.check_stripe_idempotency(p_operation_type text, p_operation_id text)
returns table (
  stripe_idempotency_key text,
  stripe_resource_id text,
  response_status integer,
  response_body jsonb,
  metadata jsonb,
  attempt integer,
  created_at timestamptz,
  updated_at timestamptz,
  expires_at timestamptz
)
language sql stable set search_path = ''
as $$
  select k.stripe_idempotency_key, k.stripe_resource_id, k.response_status, k.response_body,
         k.metadata, k.attempt, k.created_at, k.updated_at, k.expires_at
  from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type
    and k.operation_id = p_operation_id
    and k.status = 'completed';
$$;
comment on function public.check_stripe_idempotency(text, text) is
  'The completed record of an operation (key, Stripe resource, stored response), or no row.';

-- What record and release both start with: the operation's row, locked. Raises P0002 when it
-- does not exist and SI001 when the caller's token is not the row's lease (someone took over);
-- a completed row is returned as is, for the caller to judge.
create or replace function private.leased_attempt(
  p_operation_type text,
  p_operation_id text,
  p_lease_token uuid,
  p_verb text
)
returns public.stripe_idempotency_keys
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  select k.* into v_row
  from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
  for update;
  if not found then
    raise exception using errcode = 'P0002',
      message = format('Cannot %s operation %s/%s: it does not exist', p_verb, p_operation_type, p_operation_id);
  end if;
  if v_row.status <> 'completed'
     and (v_row.status <> 'in_progress' or v_row.lease_token is distinct from p_lease_token) then
    raise exception using errcode = 'SI001',
      message = format('Cannot %s operation %s/%s: the caller does not hold its lease',
                       p_verb, p_operation_type, p_operation_id);
  end if;
  return v_row;
end;
$$;
comment on function private.leased_attempt(text, text, uuid, text) is
  'Internal to record and release: the operation row, locked, if the caller holds its lease (or it is completed).';

-- Completes the attempt. Fenced by the lease token, not by the clock: a holder whose lease
-- expired may still complete as long as nobody took over (the token is unchanged). Repeating
-- the same completion (a lost commit acknowledgement) returns the row again.
create or replace function public.record_stripe_idempotency(
  p_operation_type text,
  p_operation_id text,
  p_lease_token uuid,
  p_stripe_resource_id text,
  p_response_status integer,
  p_response_body jsonb,
  p_metadata jsonb default null,
  p_now timestamptz default now()
)
returns public.stripe_idempotency_keys
language plpgsql volatile set search_path = ''
as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  if p_response_status is null or p_response_body is null then
    raise exception using errcode = '22023',
      message = 'Cannot record operation: response status and body are required';
  end if;

  v_row := private.leased_attempt(p_operation_type, p_operation_id, p_lease_token, 'record');
  if v_row.status = 'completed' then
    if v_row.lease_token = p_lease_token
       and v_row.stripe_resource_id is not distinct from p_stripe_resource_id
       and v_row.response_body = p_response_body then
      return v_row;
    end if;
    raise exception using errcode = 'SI002',
      message = format('Cannot record operation %s/%s: it is already completed with %s',
                       p_operation_type, p_operation_id, coalesce(v_row.stripe_resource_id, 'another result'));
  end if;

  update public.stripe_idempotency_keys k
  set status = 'completed',
      stripe_resource_id = p_stripe_resource_id,
      response_status = p_response_status,
      response_body = p_response_body,
      metadata = k.metadata || coalesce(p_metadata, '{}'::jsonb),
      lease_expires_at = null,
      last_error = null,
      updated_at = p_now
  where k.id = v_row.id
  returning k.* into v_row;
  return v_row;
end;
$$;
comment on function public.record_stripe_idempotency(text, text, uuid, text, integer, jsonb, jsonb, timestamptz) is
  'Completes an attempt with its Stripe resource and response; only the lease holder may; never overwrites a completed record.';

-- Ends a failed attempt. p_key_consumed says whether Stripe gave an answer it caches under the
-- key (any result of an executed request, a 500 included): then the key is burnt and the row is
-- marked failed, so the next claim arms a new key. Without an answer (timeout, connection lost,
-- or a 409/429 that Stripe does not cache) the key is kept and the lease ends now, so the next
-- claim takes over and reaches Stripe with the SAME key. Returns the row's new status.
create or replace function public.release_stripe_idempotency(
  p_operation_type text,
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
  v_row public.stripe_idempotency_keys;
begin
  if p_key_consumed is null then
    raise exception using errcode = '22023',
      message = 'Cannot release operation: say whether Stripe answered (p_key_consumed)';
  end if;

  v_row := private.leased_attempt(p_operation_type, p_operation_id, p_lease_token, 'release');
  if v_row.status = 'completed' then
    raise exception using errcode = 'SI002',
      message = format('Cannot release operation %s/%s: it is already completed', p_operation_type, p_operation_id);
  end if;

  update public.stripe_idempotency_keys k
  set status = case when p_key_consumed then 'failed' else 'in_progress' end,
      lease_token = case when p_key_consumed then null else k.lease_token end,
      lease_expires_at = case when p_key_consumed then null else p_now end,
      last_error = left(p_error, 1000),
      updated_at = p_now
  where k.id = v_row.id
  returning k.* into v_row;
  return v_row.status;
end;
$$;
comment on function public.release_stripe_idempotency(text, text, uuid, boolean, text, timestamptz) is
  'Ends a failed attempt: key burnt (failed, next claim gets a new key) when Stripe answered, kept (lease ended) when not.';

-- One batch of the cleanup: deletes up to p_batch_size expired rows with expires_at >= p_from,
-- never a row whose lease is live, and returns how many and the last expires_at it deleted.
-- SKIP LOCKED keeps it out of the way of claims that hold a row right now (those rows wait for
-- the next run). A run passes each batch's last expires_at as the next one's p_from: the rows
-- earlier batches deleted stay in the expires_at index until their transaction commits (and
-- until vacuum after that), and a batch that started from the index's beginning walked past all
-- of them again (51 entries per deleted row in a 1,000,000-row run, 6 in a cron-sized one).
-- Rows it passed over (locked, live lease) before p_from wait for the next run, as with SKIP
-- LOCKED; rows tied with the last expires_at are read again.
create or replace function private.cleanup_idempotency_batch(
  p_batch_size integer,
  p_now timestamptz,
  p_from timestamptz,
  out deleted bigint,
  out last_expires_at timestamptz
)
language plpgsql volatile set search_path = ''
as $$
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023',
      message = format('Cannot clean up idempotency keys: batch size %s is not positive', p_batch_size);
  end if;

  with doomed as (
    select k.id, k.expires_at
    from public.stripe_idempotency_keys k
    where k.expires_at >= p_from and k.expires_at <= p_now
      and not (k.status = 'in_progress' and k.lease_expires_at > p_now)
      -- A refund attempt in flight may have refunded at Stripe: only reconciliation may end it.
      and not (k.status = 'in_progress' and k.operation_type = 'refund:create')
    order by k.expires_at
    limit p_batch_size
    for update skip locked
  ),
  gone as (
    delete from public.stripe_idempotency_keys k
    using doomed
    where k.id = doomed.id
    returning doomed.expires_at
  )
  select count(*), max(g.expires_at) into deleted, last_expires_at from gone g;
end;
$$;

-- One batch from the start of the index, for a caller that runs its own loop.
create or replace function public.cleanup_expired_idempotency_keys_batch(
  p_batch_size integer default 10000,
  p_now timestamptz default now()
)
returns bigint
language plpgsql volatile set search_path = ''
as $$
begin
  return (private.cleanup_idempotency_batch(p_batch_size, p_now, '-infinity')).deleted;
end;
$$;
comment on function public.cleanup_expired_idempotency_keys_batch(integer, timestamptz) is
  'Deletes up to p_batch_size expired idempotency rows (never a live lease) and returns how many.';

-- The pause after a cleanup batch: three times as long as the batch took (at most a second).
-- A cleanup at full speed takes a core and writes WAL as fast as it can (a 1,000,000-row backlog
-- in 5 s, mostly full-page images), and the claims committing meanwhile wait for that WAL's
-- flush and for the CPU: their p99 was 2.9x the p99 without it on a scratch cluster. Busy a
-- quarter of the time (the way autovacuum's cost delay yields to the application), 1.9x, the
-- backlog gone in 25 s; pausing as long as each batch, 2.5x. A cron-sized run (90,000 rows)
-- takes about 3 s instead of 0.8.
create or replace function private.cleanup_pause(p_batch_started timestamptz)
returns void
language plpgsql volatile set search_path = ''
as $$
begin
  perform pg_sleep(least(1.0, 3 * extract(epoch from clock_timestamp() - p_batch_started)::float8));
end;
$$;

-- Batch after batch until none is left, all in the caller's transaction (a function cannot
-- commit), pausing after each full one (cleanup_pause); returns how many rows it deleted.
-- pg_cron calls the procedure below instead.
create or replace function public.cleanup_expired_idempotency_keys(
  p_batch_size integer default 10000,
  p_now timestamptz default now()
)
returns bigint
language plpgsql volatile set search_path = ''
as $$
declare
  v_total bigint := 0;
  v_batch record;
  v_from timestamptz := '-infinity';
  v_started timestamptz;
begin
  loop
    v_started := clock_timestamp();
    v_batch := private.cleanup_idempotency_batch(p_batch_size, p_now, v_from);
    v_total := v_total + v_batch.deleted;
    exit when v_batch.deleted < p_batch_size;
    v_from := v_batch.last_expires_at;
    perform private.cleanup_pause(v_started);
  end loop;
  return v_total;
end;
$$;
comment on function public.cleanup_expired_idempotency_keys(integer, timestamptz) is
  'Deletes every expired idempotency row in batches, pausing between them, in one transaction, and returns how many.';

-- What pg_cron runs: the same batches, each committed on its own, so that one run never holds
-- one transaction (its row locks, its WAL, the vacuum horizon) across a whole backlog; it
-- pauses after each commit. It must be called at top level (`call`, not inside begin …
-- commit). No `set search_path` clause: a procedure with one cannot commit; it names only
-- schema-qualified objects, and the functions it calls pin their own search_path.
create or replace procedure public.run_cleanup_expired_idempotency_keys(
  p_batch_size integer default 10000,
  p_now timestamptz default now()
)
language plpgsql
as $$
declare
  v_batch record;
  v_from timestamptz := '-infinity';
  v_started timestamptz;
begin
  loop
    v_started := clock_timestamp();
    v_batch := private.cleanup_idempotency_batch(p_batch_size, p_now, v_from);
    exit when v_batch.deleted < p_batch_size;
    v_from := v_batch.last_expires_at;
    commit;
    perform private.cleanup_pause(v_started);
  end loop;
end;
$$;
comment on procedure public.run_cleanup_expired_idempotency_keys(integer, timestamptz) is
  'pg_cron: deletes every expired idempotency row, committing and pausing after each batch (call it at top level).';

revoke execute on function
  public.claim_stripe_idempotency(text, text, text, text, uuid, integer, jsonb, timestamptz, uuid),
  public.check_stripe_idempotency(text, text),
  public.record_stripe_idempotency(text, text, uuid, text, integer, jsonb, jsonb, timestamptz),
  public.release_stripe_idempotency(text, text, uuid, boolean, text, timestamptz),
  public.cleanup_expired_idempotency_keys_batch(integer, timestamptz),
  public.cleanup_expired_idempotency_keys(integer, timestamptz)
from public, anon, authenticated;
revoke execute on procedure public.run_cleanup_expired_idempotency_keys(integer, timestamptz)
from public, anon, authenticated;

grant execute on function
  public.claim_stripe_idempotency(text, text, text, text, uuid, integer, jsonb, timestamptz, uuid),
  public.check_stripe_idempotency(text, text),
  public.record_stripe_idempotency(text, text, uuid, text, integer, jsonb, jsonb, timestamptz),
  public.release_stripe_idempotency(text, text, uuid, boolean, text, timestamptz),
  public.cleanup_expired_idempotency_keys_batch(integer, timestamptz),
  public.cleanup_expired_idempotency_keys(integer, timestamptz)
to service_role;
grant execute on procedure public.run_cleanup_expired_idempotency_keys(integer, timestamptz)
to service_role;
