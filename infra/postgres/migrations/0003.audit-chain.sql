-- The tamper-evident history (README "Tamper-evident history"): every event carries a SHA-256
-- hash chained to the event before it in the log, the head of the chain is kept in one row
-- updated by every commit, and checkpoints sign that head with the audit key.
-- depends: 0002.key-expiry

-- When the event entered the chain (the database's clock, under the head's row lock), and
-- its hash. Events recorded before this migration carry the time of the upgrade.
ALTER TABLE sessiond_events ADD COLUMN IF NOT EXISTS recorded_at timestamptz;
ALTER TABLE sessiond_events ADD COLUMN IF NOT EXISTS chain_hash bytea;

-- The head of the chain: the last event chained, how many there are, and its hash; written
-- by every commit that records events. Its row lock, taken before the events' positions are
-- reserved and held to the commit, serialises chain extension across every writer.
CREATE TABLE IF NOT EXISTS sessiond_audit_head (
    id integer PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL,
    events bigint NOT NULL,
    hash bytea NOT NULL
);

-- Signed heads: (position, events, hash, signed_at) signed with Ed25519.
CREATE TABLE IF NOT EXISTS sessiond_audit_checkpoints (
    position bigint PRIMARY KEY,
    events bigint NOT NULL,
    hash bytea NOT NULL,
    signed_at timestamptz NOT NULL,
    public_key bytea NOT NULL,
    signature bytea NOT NULL
);

-- The audit key's public half, and its private half while sessiond generated it and it is not
-- configured (SESSIOND_AUDIT_SIGNING_KEY); configuring it removes the private half from here.
CREATE TABLE IF NOT EXISTS sessiond_audit_key (
    id integer PRIMARY KEY CHECK (id = 1),
    public_key bytea NOT NULL,
    private_key bytea
);

-- The canonical encoding (the README gives it byte by byte, with a worked example):
-- SHA-256 of previous hash (32 bytes) | position (int64) | originator id (16 bytes) |
-- version (int64) | recorded_at in microseconds since 1970-01-01T00:00:00Z (int64) |
-- length of the topic's UTF-8 (int32) | the topic | length of the state (int64) | the state;
-- every integer big-endian, signed.
CREATE OR REPLACE FUNCTION sessiond_event_hash(
    previous bytea, pos bigint, originator uuid, ver bigint, topic text,
    recorded timestamptz, state bytea
) RETURNS bytea LANGUAGE sql IMMUTABLE AS $body$
    SELECT sha256(
        previous || int8send(pos) || uuid_send(originator) || int8send(ver)
        || int8send((extract(epoch FROM recorded) * 1000000)::bigint)
        || int4send(octet_length(convert_to(coalesce(topic, ''), 'UTF8')))
        || convert_to(coalesce(topic, ''), 'UTF8')
        || int8send(octet_length(coalesce(state, ''::bytea))) || coalesce(state, ''::bytea)
    )
$body$;

-- Chain the events already recorded, in notification order, with writers of an older
-- release kept out meanwhile.
LOCK TABLE sessiond_events IN EXCLUSIVE MODE;
DO $do$
DECLARE
    event record;
    head bytea := decode(repeat('00', 32), 'hex');
    count bigint := 0;
    last bigint := 0;
    chained timestamptz := date_trunc('milliseconds', clock_timestamp());
BEGIN
    IF EXISTS (SELECT 1 FROM sessiond_audit_head) THEN
        RETURN;
    END IF;
    FOR event IN
        SELECT notification_id, originator_id, originator_version, topic, state
        FROM sessiond_events ORDER BY notification_id
    LOOP
        head := sessiond_event_hash(
            head, event.notification_id, event.originator_id, event.originator_version,
            event.topic, chained, event.state
        );
        UPDATE sessiond_events SET recorded_at = chained, chain_hash = head
        WHERE notification_id = event.notification_id;
        count := count + 1;
        last := event.notification_id;
    END LOOP;
    INSERT INTO sessiond_audit_head (id, position, events, hash) VALUES (1, last, count, head);
END $do$;

-- sessiond's recorder inserts events with this function (infra/postgres/audit.py), under the
-- event table's lock (which already keeps every other insert out): it reads the head, reserves
-- the events' positions, hashes them in order and writes the new head once, in one statement
-- per commit. The head's update takes its row lock (held to the commit) and is conditional on
-- the head read: a caller that skipped the table lock and raced another fails, and leaves
-- nothing, rather than forking the chain.
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
    ids bigint[];
    hashes bytea[] := '{}';
    topic bytea;
    state bytea;
BEGIN
    SELECT h.position, h.events, h.hash INTO last, chained, previous
    FROM sessiond_audit_head AS h WHERE h.id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain has no head row';
    END IF;
    ids := ARRAY(
        SELECT nextval('sessiond_events_notification_id_seq'::regclass)
        FROM generate_series(1, count)
    );
    FOR i IN 1..count LOOP
        topic := convert_to(coalesce(topics[i], ''), 'UTF8');
        state := coalesce(states[i], ''::bytea);
        previous := sha256(
            previous || int8send(ids[i]) || uuid_send(originators[i]) || int8send(versions[i])
            || micros || int4send(octet_length(topic)) || topic
            || int8send(octet_length(state)) || state
        );
        hashes := hashes || previous;
    END LOOP;
    UPDATE sessiond_audit_head SET position = ids[count], events = chained + count, hash = previous
    WHERE id = 1 AND position = last;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain''s head moved while these events were chained (events must be recorded under the table lock)';
    END IF;
    RETURN QUERY
        INSERT INTO sessiond_events (
            notification_id, originator_id, originator_version, topic, state, recorded_at,
            chain_hash
        )
        SELECT u.i, u.o, u.v, u.t, u.s, recorded, u.h
        FROM unnest(ids, originators, versions, topics, states, hashes) AS u(i, o, v, t, s, h)
        RETURNING notification_id;
END $body$;

-- An event inserted without a hash (a writer of an older release during an upgrade, or anyone
-- else) is chained by this trigger instead, one head update per event, under the same lock;
-- one that would be chained at or before the head's position (a writer that skipped the table
-- lock) is refused. Its time and hash are set here.
CREATE OR REPLACE FUNCTION sessiond_chain_event() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    NEW.recorded_at := clock_timestamp();
    UPDATE sessiond_audit_head AS h SET
        position = NEW.notification_id,
        events = h.events + 1,
        hash = sessiond_event_hash(
            h.hash, NEW.notification_id, NEW.originator_id, NEW.originator_version,
            NEW.topic, NEW.recorded_at, NEW.state
        )
    WHERE h.id = 1 AND h.position < NEW.notification_id
    RETURNING h.hash INTO NEW.chain_hash;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event at position % cannot extend the audit chain: a later position is already chained (events must be recorded under the table lock)', NEW.notification_id;
    END IF;
    RETURN NEW;
END $body$;
DO $do$ BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'sessiond_chain' AND tgrelid = 'sessiond_events'::regclass
    ) THEN
        CREATE TRIGGER sessiond_chain BEFORE INSERT ON sessiond_events
        FOR EACH ROW WHEN (NEW.chain_hash IS NULL) EXECUTE FUNCTION sessiond_chain_event();
    END IF;
END $do$;
