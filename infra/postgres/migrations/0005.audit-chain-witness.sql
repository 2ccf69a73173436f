-- The audit chain without a write of its head by every commit (README "Tamper-evident
-- history"). The same chain, hashes and encoding as 0003/0004; what changes is where a commit
-- finds the hash it extends, and what the row of sessiond_audit_head means.
--
-- - A commit extends the chain from the last event in the log (the end of the primary key's
--   index: one index probe), under the event table's lock, which the function takes itself
--   (nothing when the caller holds it already, as sessiond's recorder does): so two writers
--   cannot fork the chain even if one of them skipped the lock. Writing the head row with
--   every commit cost one more UPDATE inside that lock, the chain's whole cost on the command
--   path with 8 writers (bench/audit_chain.py).
-- - sessiond_audit_head is now the chain's end as last *witnessed*: advanced by
--   sessiond_witness_chain(), which the projector role's checkpointer calls every second and
--   every check or export calls first. It only moves forward, and only while the event it
--   witnessed is still there with the hash it witnessed; so events deleted from the end of
--   the log after they were witnessed are found (the log then ends before the witness), as
--   before; events deleted within a second of their commit, before any witness, are not.
-- depends: 0004.audit-chain-insert

-- The hash to chain from when the log's last event has none (someone recorded it with the
-- chain's trigger disabled): the last event that has one (the genesis if none has), so the
-- service goes on recording and a check reports the unchained event where it is. Never
-- called on the usual path.
CREATE OR REPLACE FUNCTION sessiond_last_chained_hash(before bigint) RETURNS bytea
LANGUAGE sql STABLE AS $body$
    SELECT coalesce(
        (SELECT e.chain_hash FROM sessiond_events AS e
         WHERE e.notification_id < before AND e.chain_hash IS NOT NULL
         ORDER BY e.notification_id DESC LIMIT 1),
        decode(repeat('00', 32), 'hex')
    )
$body$;

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
    recorded timestamptz;
    topic bytea := convert_to(coalesce(topic_text, ''), 'UTF8');
    state bytea := coalesce(state_in, ''::bytea);
    previous bytea;
    last bigint;
    new_id bigint;
BEGIN
    LOCK TABLE sessiond_events IN EXCLUSIVE MODE;
    recorded := clock_timestamp();
    SELECT e.notification_id, e.chain_hash INTO last, previous
    FROM sessiond_events AS e ORDER BY e.notification_id DESC LIMIT 1;
    IF NOT FOUND THEN
        previous := decode(repeat('00', 32), 'hex');
    ELSIF previous IS NULL THEN
        previous := sessiond_last_chained_hash(last);
    END IF;
    new_id := nextval('sessiond_events_notification_id_seq'::regclass);
    previous := sha256(
        previous || int8send(new_id) || uuid_send(originator) || int8send(ver)
        || int8send((extract(epoch FROM recorded) * 1000000)::bigint)
        || int4send(octet_length(topic)) || topic
        || int8send(octet_length(state)) || state
    );
    INSERT INTO sessiond_events (
        notification_id, originator_id, originator_version, topic, state, recorded_at, chain_hash
    ) VALUES (new_id, originator, ver, topic_text, state_in, recorded, previous);
    RETURN new_id;
END $body$;

-- An event inserted without a hash (a writer of an older release during an upgrade, or
-- anyone else) is chained by the trigger instead, from the last event in the log, under the
-- same lock; one that would be chained at or before the last event's position is refused.
CREATE OR REPLACE FUNCTION sessiond_chain_event() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    previous bytea;
    last bigint;
BEGIN
    LOCK TABLE sessiond_events IN EXCLUSIVE MODE;
    SELECT e.notification_id, e.chain_hash INTO last, previous
    FROM sessiond_events AS e ORDER BY e.notification_id DESC LIMIT 1;
    IF NOT FOUND THEN
        previous := decode(repeat('00', 32), 'hex');
        last := 0;
    ELSIF previous IS NULL THEN
        previous := sessiond_last_chained_hash(last);
    END IF;
    IF NEW.notification_id <= last THEN
        RAISE EXCEPTION 'event at position % cannot extend the audit chain: a later position is already chained (events must be recorded under the table lock)', NEW.notification_id;
    END IF;
    NEW.recorded_at := clock_timestamp();
    NEW.chain_hash := sessiond_event_hash(
        previous, NEW.notification_id, NEW.originator_id, NEW.originator_version,
        NEW.topic, NEW.recorded_at, NEW.state
    );
    RETURN NEW;
END $body$;

-- Advance the witnessed end to the log's last event, counting the events since the last
-- witness, and return it. It does not move when the log ends at or before the witness (its
-- last events were deleted) or when the witnessed event is no longer there as witnessed: the
-- witness then stays as the evidence a check reports. Not on the command path: the
-- checkpointer's tick, a check and an export call it.
CREATE OR REPLACE FUNCTION sessiond_witness_chain(
    OUT witnessed bigint, OUT witnessed_events bigint, OUT witnessed_hash bytea
) LANGUAGE plpgsql AS $body$
DECLARE
    last bigint;
    last_hash bytea;
    added bigint;
BEGIN
    SELECT h.position, h.events, h.hash INTO witnessed, witnessed_events, witnessed_hash
    FROM sessiond_audit_head AS h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain has no witness row';
    END IF;
    SELECT e.notification_id, e.chain_hash INTO last, last_hash
    FROM sessiond_events AS e ORDER BY e.notification_id DESC LIMIT 1;
    IF NOT FOUND OR last <= witnessed OR last_hash IS NULL THEN
        RETURN;
    END IF;
    IF witnessed > 0 AND NOT EXISTS (
        SELECT 1 FROM sessiond_events AS e
        WHERE e.notification_id = witnessed AND e.chain_hash = witnessed_hash
    ) THEN
        RETURN;
    END IF;
    SELECT count(*) INTO added FROM sessiond_events AS e
    WHERE e.notification_id > witnessed AND e.notification_id <= last;
    witnessed := last;
    witnessed_events := witnessed_events + added;
    witnessed_hash := last_hash;
    UPDATE sessiond_audit_head AS h
    SET position = witnessed, events = witnessed_events, hash = witnessed_hash
    WHERE h.id = 1;
END $body$;
