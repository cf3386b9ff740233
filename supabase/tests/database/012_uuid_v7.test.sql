-- Order ids are time-ordered (UUIDv7), so new orders append to the right of their indexes.
begin;
select plan(4);

select is(substr(private.uuid_v7()::text, 15, 1), '7', 'version 7');
select ok(substr(private.uuid_v7()::text, 20, 1) in ('8', '9', 'a', 'b'), 'RFC 9562 variant');
create temp table ids (n int, id uuid);
insert into ids values (1, private.uuid_v7());
select pg_sleep(0.002);
insert into ids values (2, private.uuid_v7());
select ok((select id from ids where n = 1) < (select id from ids where n = 2),
          'a later id sorts after an earlier one');
select is((select column_default::text from information_schema.columns
           where table_schema = 'public' and table_name = 'orders' and column_name = 'id'),
          'private.uuid_v7()', 'orders.id defaults to it');

select * from finish();
rollback;
