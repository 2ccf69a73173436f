-- The schema of the release before migrations existed (commit 3c35a25), every table of it.
--
-- Written with IF NOT EXISTS so that it also adopts a database that release (or an earlier
-- one) made: there it changes nothing but what the ALTERs below add. Never edit an applied
-- migration: a change to the schema is a new file after this one.
--
-- The event store (``sessiond_events``, ``sessiond_snapshots``) and the tracking tables are
-- the ones eventsourcing 9.5.6 would create (its CREATE_TABLE is off in sessiond): this file
-- is what creates them, so that one ordered list creates every table. Views rebuilt into a
-- new generation (``sessiond projections rebuild``) get their tables from the view classes
-- in infra/postgres/views.py, which a test keeps equal to the generation-0 tables made here.

-- The event store (eventsourcing's PostgreSQL recorder, notification log included).
CREATE TABLE IF NOT EXISTS sessiond_events (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version)
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE UNIQUE INDEX IF NOT EXISTS sessiond_events_notification_id_idx
    ON sessiond_events (notification_id ASC);
CREATE TABLE IF NOT EXISTS sessiond_snapshots (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    PRIMARY KEY (originator_id, originator_version)
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
-- eventsourcing registers this type's adapter when it starts; its insert function is unused
-- (sessiond refuses POSTGRES_ENABLE_DB_FUNCTIONS) but kept as that release made it.
DO $do$ BEGIN
    CREATE TYPE stored_event_uuid AS (
        originator_id uuid, originator_version bigint, topic text, state bytea
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END $do$;
CREATE OR REPLACE FUNCTION es_insert_events_uuid(events stored_event_uuid[])
RETURNS SETOF bigint LANGUAGE plpgsql AS $body$BEGIN    SET LOCAL lock_timeout = '5s';    NOTIFY "sessiond_events";    RETURN QUERY    INSERT INTO "public"."sessiond_events" AS t (    originator_id, originator_version, topic, state)    SELECT originator_id, originator_version, topic, state    FROM unnest(events)    RETURNING notification_id;END;$body$;

-- Revocations, written by the recorder with the event that revokes (infra/postgres/revocations.py);
-- the trigger refuses a revoking event recorded without its row. Its topics are
-- application.revocations.REVOCATION_TOPICS: a new revoking event needs a migration
-- (tests/integration/test_migrations.py fails until it has one).
CREATE TABLE IF NOT EXISTS sessiond_revocations (
    position bigint PRIMARY KEY,
    session_id text NOT NULL,
    key_ids text[] NOT NULL,
    session_deleted boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS sessiond_revocations_session ON sessiond_revocations (session_id);
CREATE OR REPLACE FUNCTION sessiond_check_revocation() RETURNS trigger LANGUAGE plpgsql AS
$body$ BEGIN IF NOT EXISTS (SELECT 1 FROM "public"."sessiond_revocations" WHERE position = NEW.notification_id) THEN RAISE EXCEPTION 'event at position % (%) revokes keys, but its revocation was not recorded with it', NEW.notification_id, NEW.topic; END IF; RETURN NULL; END $body$;
DO $do$ BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'sessiond_revocation_recorded' AND tgrelid = 'sessiond_events'::regclass
    ) THEN
        CREATE CONSTRAINT TRIGGER sessiond_revocation_recorded AFTER INSERT ON sessiond_events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (NEW.topic IN (
            'sessiond:Session.ApiKeyRevoked', 'sessiond:Session.Deleted',
            'sessiond:Session.KeysRevoked'
        ))
        EXECUTE FUNCTION sessiond_check_revocation();
    END IF;
END $do$;

-- The operator's admin key when none is configured (generated once, shown once).
CREATE TABLE IF NOT EXISTS sessiond_admin (
    id int PRIMARY KEY CHECK (id = 1),
    key_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Which generation of each view serves (infra/postgres/generations.py).
CREATE TABLE IF NOT EXISTS sessiond_view_generations (
    name text PRIMARY KEY,
    generation int NOT NULL,
    switched_at timestamptz NOT NULL DEFAULT now()
);

-- The status view, generation 0 (infra/postgres/views.py).
CREATE TABLE IF NOT EXISTS session_status (
    session_id text PRIMARY KEY,
    status text NOT NULL,
    desired text NOT NULL,
    labels jsonb NOT NULL,
    position bigint NOT NULL,
    doc text NOT NULL
);
CREATE INDEX IF NOT EXISTS session_status_position_idx ON session_status (position);
-- Snapshots of status rows, for reads of a past state (infra/postgres/snapshots.py).
CREATE TABLE IF NOT EXISTS sessiond_status_snapshots (
    session_id uuid NOT NULL,
    format int NOT NULL,
    version int NOT NULL,
    at timestamptz NOT NULL,
    row bytea NOT NULL,
    PRIMARY KEY (session_id, format, version)
);

-- The keys view, generation 0 (infra/postgres/views.py).
CREATE TABLE IF NOT EXISTS api_keys (
    key_id text PRIMARY KEY,
    session_id text NOT NULL,
    key_hash text NOT NULL,
    position bigint NOT NULL,
    doc text NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_position_idx ON api_keys (position);
CREATE INDEX IF NOT EXISTS api_keys_session_id_idx ON api_keys (session_id);

-- The messages view, generation 0 (infra/postgres/views.py).
CREATE TABLE IF NOT EXISTS messages (
    message_id text PRIMARY KEY,
    session_id text NOT NULL,
    direction text NOT NULL,
    status text NOT NULL,
    idempotency_key text,
    position bigint NOT NULL,
    doc text NOT NULL,
    whatsapp_id text
);
CREATE INDEX IF NOT EXISTS messages_whatsapp_idx ON messages (session_id, whatsapp_id)
    WHERE whatsapp_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_session_idx ON messages (session_id, position);
CREATE INDEX IF NOT EXISTS messages_idempotency_idx ON messages (session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The uptime view, generation 0 (infra/postgres/views.py).
CREATE TABLE IF NOT EXISTS sessiond_uptime (
    session_id uuid NOT NULL,
    position bigint NOT NULL,
    at timestamptz NOT NULL,
    running boolean NOT NULL,
    connected boolean NOT NULL,
    PRIMARY KEY (session_id, position)
);
CREATE INDEX IF NOT EXISTS sessiond_uptime_at ON sessiond_uptime (session_id, at, position);

-- The gateway view, leases, deadlines and requests (infra/postgres/gateway.py).
CREATE TABLE IF NOT EXISTS sessiond_gateway_sessions (
    session_id uuid PRIMARY KEY,
    desired text NOT NULL,
    generation int NOT NULL DEFAULT 0,
    jid text,
    position bigint NOT NULL
);
-- Databases made by the first release have no queue column.
ALTER TABLE sessiond_gateway_sessions ADD COLUMN IF NOT EXISTS queued int NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS sessiond_gateway_sessions_desired
    ON sessiond_gateway_sessions (desired);
CREATE INDEX IF NOT EXISTS sessiond_gateway_sessions_position
    ON sessiond_gateway_sessions (position);
CREATE TABLE IF NOT EXISTS sessiond_deadlines (
    session_id uuid NOT NULL,
    kind text NOT NULL,
    due_at timestamptz NOT NULL,
    token bigint NOT NULL,
    claims int NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, kind)
);
CREATE INDEX IF NOT EXISTS sessiond_deadlines_due ON sessiond_deadlines (due_at);
CREATE TABLE IF NOT EXISTS sessiond_leases (
    session_id uuid PRIMARY KEY,
    owner text NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sessiond_leases_owner ON sessiond_leases (owner);
CREATE TABLE IF NOT EXISTS sessiond_workers (
    id text PRIMARY KEY,
    ttl float8 NOT NULL,
    renewed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sessiond_gateway_requests (
    id bigserial PRIMARY KEY,
    session_id uuid NOT NULL,
    action text NOT NULL,
    args jsonb NOT NULL,
    claimed_by text,
    result jsonb,
    error_code text,
    error_detail text,
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz
);
CREATE INDEX IF NOT EXISTS sessiond_gateway_requests_open
    ON sessiond_gateway_requests (session_id) WHERE done_at IS NULL;
-- The simulator's device store (infra/postgres/gateway.py).
CREATE TABLE IF NOT EXISTS sessiond_simulator_devices (jid text PRIMARY KEY);

-- Webhook endpoints, deliveries and attempts (infra/postgres/webhooks.py).
CREATE TABLE IF NOT EXISTS sessiond_webhook_state (
    id int PRIMARY KEY CHECK (id = 1),
    start_position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS sessiond_webhook_endpoints (
    webhook_id text PRIMARY KEY,
    url text NOT NULL,
    events jsonb NOT NULL,
    session_id text,
    enabled boolean NOT NULL,
    disabled_reason text,
    version int NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    failing_since timestamptz
);
CREATE INDEX IF NOT EXISTS sessiond_webhook_endpoints_session
    ON sessiond_webhook_endpoints (session_id);
CREATE TABLE IF NOT EXISTS sessiond_webhook_deliveries (
    delivery_id text PRIMARY KEY,
    webhook_id text NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    session_id text NOT NULL,
    position bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    status text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    last_status int,
    last_error text,
    replay boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS sessiond_webhook_deliveries_due
    ON sessiond_webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS sessiond_webhook_deliveries_endpoint_due
    ON sessiond_webhook_deliveries (webhook_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS sessiond_webhook_deliveries_endpoint
    ON sessiond_webhook_deliveries (webhook_id, created_at);
CREATE TABLE IF NOT EXISTS sessiond_webhook_replays (
    webhook_id text PRIMARY KEY,
    until timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sessiond_webhook_attempts (
    delivery_id text NOT NULL,
    attempt int NOT NULL,
    at timestamptz NOT NULL,
    status_code int,
    duration_ms float8 NOT NULL,
    error text,
    response text,
    PRIMARY KEY (delivery_id, attempt)
);
-- Webhooks deliver what is recorded from their first set-up on: history is never sent.
INSERT INTO sessiond_webhook_state (id, start_position)
SELECT 1, coalesce(max(notification_id), 0) FROM sessiond_events
ON CONFLICT (id) DO NOTHING;

-- API processes and how long each trusts its copy of the views (infra/postgres/viewcache.py).
CREATE TABLE IF NOT EXISTS sessiond_api_instances (
    instance_id text PRIMARY KEY,
    position bigint NOT NULL,
    seen_at timestamptz NOT NULL,
    trusted_until timestamptz NOT NULL,
    revoked_through bigint NOT NULL DEFAULT 0
);
-- Databases made by the first release have neither column.
ALTER TABLE sessiond_api_instances
    ADD COLUMN IF NOT EXISTS trusted_until timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS revoked_through bigint NOT NULL DEFAULT 0;

-- Each view's tracking record (eventsourcing's tracking recorder, one row per application).
CREATE TABLE IF NOT EXISTS session_status_tracking (
    application_name text PRIMARY KEY,
    notification_id bigint
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE TABLE IF NOT EXISTS api_keys_tracking (
    application_name text PRIMARY KEY,
    notification_id bigint
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE TABLE IF NOT EXISTS messages_tracking (
    application_name text PRIMARY KEY,
    notification_id bigint
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE TABLE IF NOT EXISTS uptime_tracking (
    application_name text PRIMARY KEY,
    notification_id bigint
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE TABLE IF NOT EXISTS gateway_tracking (
    application_name text PRIMARY KEY,
    notification_id bigint
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
CREATE TABLE IF NOT EXISTS webhooks_tracking (
    application_name text PRIMARY KEY,
    notification_id bigint
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
-- eventsourcing marks a tracking table it made as one row per application (single-row
-- tracking) with this record; without it, it would take the table for an older layout.
INSERT INTO session_status_tracking VALUES ('__migration__', 1) ON CONFLICT DO NOTHING;
INSERT INTO api_keys_tracking VALUES ('__migration__', 1) ON CONFLICT DO NOTHING;
INSERT INTO messages_tracking VALUES ('__migration__', 1) ON CONFLICT DO NOTHING;
INSERT INTO uptime_tracking VALUES ('__migration__', 1) ON CONFLICT DO NOTHING;
INSERT INTO gateway_tracking VALUES ('__migration__', 1) ON CONFLICT DO NOTHING;
INSERT INTO webhooks_tracking VALUES ('__migration__', 1) ON CONFLICT DO NOTHING;
