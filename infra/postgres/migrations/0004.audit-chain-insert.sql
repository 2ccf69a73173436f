-- The audit chain's insert, cheaper per commit (README "Tamper-evident history"): the same
-- chain, hashes and head as 0003.audit-chain.sql, written by a loop of single-row statements
-- (no set-returning subqueries over the arrays), and a function for the usual commit of one
-- event that takes it as plain values. Each reads the head, reserves the positions, hashes in
-- order, writes the new head (conditional on the head read: a caller that skipped the table
-- lock and raced another fails, and leaves nothing) and then inserts the events.
-- depends: 0003.audit-chain

CREATE OR REPLACE FUNCTION sessiond_insert_chained(
    originators uuid[], versions bigint[], topics text[], states bytea[]
) RETURNS SETOF bigint LANGUAGE plpgsql AS $body$
DECLARE
    count integer := cardinality(originators);
    recorded timestamptz := clock_timestamp();
    micros bytea := int8send((extract(epoch FROM recorded) * 1000000)::bigint);
    previous bytea;
    last bigint;
    chained bigint;
    ids bigint[] := '{}';
    hashes bytea[] := '{}';
    topic bytea;
    state bytea;
BEGIN
    SELECT h.position, h.events, h.hash INTO last, chained, previous
    FROM sessiond_audit_head AS h WHERE h.id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain has no head row';
    END IF;
    FOR i IN 1..count LOOP
        ids[i] := nextval('sessiond_events_notification_id_seq'::regclass);
        topic := convert_to(coalesce(topics[i], ''), 'UTF8');
        state := coalesce(states[i], ''::bytea);
        previous := sha256(
            previous || int8send(ids[i]) || uuid_send(originators[i]) || int8send(versions[i])
            || micros || int4send(octet_length(topic)) || topic
            || int8send(octet_length(state)) || state
        );
        hashes[i] := previous;
    END LOOP;
    UPDATE sessiond_audit_head SET position = ids[count], events = chained + count, hash = previous
    WHERE id = 1 AND position = last;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain''s head moved while these events were chained (events must be recorded under the table lock)';
    END IF;
    FOR i IN 1..count LOOP
        INSERT INTO sessiond_events (
            notification_id, originator_id, originator_version, topic, state, recorded_at,
            chain_hash
        ) VALUES (ids[i], originators[i], versions[i], topics[i], states[i], recorded, hashes[i]);
        RETURN NEXT ids[i];
    END LOOP;
    RETURN;
END $body$;

CREATE OR REPLACE FUNCTION sessiond_insert_chained_one(
    originator uuid, ver bigint, topic_text text, state_in bytea
) RETURNS bigint LANGUAGE plpgsql AS $body$
DECLARE
    recorded timestamptz := clock_timestamp();
    topic bytea := convert_to(coalesce(topic_text, ''), 'UTF8');
    state bytea := coalesce(state_in, ''::bytea);
    previous bytea;
    last bigint;
    new_id bigint;
BEGIN
    SELECT h.position, h.hash INTO last, previous FROM sessiond_audit_head AS h WHERE h.id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain has no head row';
    END IF;
    new_id := nextval('sessiond_events_notification_id_seq'::regclass);
    previous := sha256(
        previous || int8send(new_id) || uuid_send(originator) || int8send(ver)
        || int8send((extract(epoch FROM recorded) * 1000000)::bigint)
        || int4send(octet_length(topic)) || topic
        || int8send(octet_length(state)) || state
    );
    UPDATE sessiond_audit_head AS h SET position = new_id, events = h.events + 1, hash = previous
    WHERE h.id = 1 AND h.position = last;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain''s head moved while these events were chained (events must be recorded under the table lock)';
    END IF;
    INSERT INTO sessiond_events (
        notification_id, originator_id, originator_version, topic, state, recorded_at, chain_hash
    ) VALUES (new_id, originator, ver, topic_text, state_in, recorded, previous);
    RETURN new_id;
END $body$;
