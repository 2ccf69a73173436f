-- The chained inserts with fewer statements under the event table's lock (README
-- "Tamper-evident history"; the same chain and encoding as 0003-0005, the same functions).
-- - A commit of one event (sessiond_insert_chained_one): one INSERT reads the last event's
--   hash, reserves the position, hashes and inserts, in one executor run, instead of four
--   PL/pgSQL statements; PL/pgSQL keeps its plan for the connection's life (sessiond
--   prepares no statement of its own, and planning the same INSERT sent as plain SQL with
--   every commit cost more than the statements it replaces).
-- - A commit of several (sessiond_insert_chained, a group commit's batch): the hashes are
--   computed in order as before, then one INSERT from the arrays instead of one per event.
-- Both write the encoding out, as 0004 and 0005 did, rather than call sessiond_event_hash
-- (0003): the planner does not inline that function (its body is not immutable throughout),
-- so each event would pay an SQL function call inside the table's lock.
-- depends: 0005.audit-chain-witness

CREATE OR REPLACE FUNCTION sessiond_insert_chained_one(
    originator uuid, ver bigint, topic_text text, state_in bytea
) RETURNS bigint LANGUAGE plpgsql AS $body$
DECLARE
    new_id bigint;
BEGIN
    LOCK TABLE sessiond_events IN EXCLUSIVE MODE;
    WITH event AS (
        SELECT nextval('sessiond_events_notification_id_seq'::regclass) AS position,
            clock_timestamp() AS recorded,
            convert_to(coalesce(topic_text, ''), 'UTF8') AS topic_utf8,
            coalesce(state_in, ''::bytea) AS state_bytes
    ), last AS (
        SELECT e.notification_id, e.chain_hash FROM sessiond_events AS e
        ORDER BY e.notification_id DESC LIMIT 1
    )
    INSERT INTO sessiond_events (
        notification_id, originator_id, originator_version, topic, state, recorded_at,
        chain_hash
    )
    SELECT v.position, originator, ver, topic_text, state_in, v.recorded, sha256(
        coalesce(
            (SELECT coalesce(l.chain_hash, sessiond_last_chained_hash(l.notification_id))
             FROM last AS l),
            decode(repeat('00', 32), 'hex')
        )
        || int8send(v.position) || uuid_send(originator) || int8send(ver)
        || int8send((extract(epoch FROM v.recorded) * 1000000)::bigint)
        || int4send(octet_length(v.topic_utf8)) || v.topic_utf8
        || int8send(octet_length(v.state_bytes)) || v.state_bytes
    )
    FROM event AS v
    RETURNING notification_id INTO new_id;
    RETURN new_id;
END $body$;

CREATE OR REPLACE FUNCTION sessiond_insert_chained(
    originators uuid[], versions bigint[], topics text[], states bytea[]
) RETURNS SETOF bigint LANGUAGE plpgsql AS $body$
DECLARE
    count integer := cardinality(originators);
    recorded timestamptz;
    micros bytea;
    previous bytea;
    last bigint;
    ids bigint[] := '{}';
    hashes bytea[] := '{}';
    topic bytea;
    state bytea;
BEGIN
    LOCK TABLE sessiond_events IN EXCLUSIVE MODE;
    recorded := clock_timestamp();
    micros := int8send((extract(epoch FROM recorded) * 1000000)::bigint);
    SELECT e.notification_id, e.chain_hash INTO last, previous
    FROM sessiond_events AS e ORDER BY e.notification_id DESC LIMIT 1;
    IF NOT FOUND THEN
        previous := decode(repeat('00', 32), 'hex');
    ELSIF previous IS NULL THEN
        previous := sessiond_last_chained_hash(last);
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
    INSERT INTO sessiond_events (
        notification_id, originator_id, originator_version, topic, state, recorded_at,
        chain_hash
    )
    SELECT u.id, u.originator, u.version, u.topic, u.state, recorded, u.hash
    FROM unnest(ids, originators, versions, topics, states, hashes)
        AS u (id, originator, version, topic, state, hash)
    ORDER BY u.id;
    RETURN QUERY SELECT unnest(ids);
END $body$;
