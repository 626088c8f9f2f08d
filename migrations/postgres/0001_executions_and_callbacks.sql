-- The whole schema of the SQLite store's migrations 0001-0003, in PostgreSQL's types.
-- Executions of both kinds, and the callback (outbox row) that goes with each token. The token lives only
-- in callbacks.token: the stored status never holds it, so no ordinary read can return it, and clearing it
-- is one column update.
CREATE TABLE executions (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('agent', 'workflow')),
    phase           INTEGER NOT NULL,
    spec            BYTEA NOT NULL,
    status          BYTEA NOT NULL,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    -- A runner's claim: until when, and for how long each renewal extends it.
    claim_until_ms  BIGINT NOT NULL DEFAULT 0,
    claim_lease_ms  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX executions_by_phase ON executions (kind, phase, created_ms);

-- state: armed (child running) -> due (outcome recorded, not yet told) -> delivering (claimed under a
-- lease) -> delivered | gone (with a reason) | dead (dead-lettered); a failed delivery goes back to due,
-- after next_attempt_ms.
CREATE TABLE callbacks (
    execution_id          TEXT PRIMARY KEY REFERENCES executions (id) ON DELETE CASCADE,
    token                 BYTEA,
    fingerprint           TEXT NOT NULL,
    workflow_id           TEXT NOT NULL,
    run_id                TEXT NOT NULL,
    activity_id           TEXT NOT NULL,
    attempt               BIGINT NOT NULL,
    state                 TEXT NOT NULL,
    outcome               TEXT,
    payloads              BYTEA,
    failure_message       TEXT,
    failure_type          TEXT,
    non_retryable         BOOLEAN NOT NULL DEFAULT FALSE,
    attempts              BIGINT NOT NULL DEFAULT 0,
    last_error            TEXT,
    lease_until_ms        BIGINT NOT NULL DEFAULT 0,
    created_ms            BIGINT NOT NULL,
    settled_ms            BIGINT,
    gone_reason           TEXT,
    next_attempt_ms       BIGINT NOT NULL DEFAULT 0,
    due_ms                BIGINT,
    -- The parent activity's heartbeat timeout, recorded when the caller defers (NULL: it has none).
    heartbeat_timeout_ms  BIGINT
);
CREATE INDEX callbacks_by_state ON callbacks (state, lease_until_ms);
-- A retried parent activity (same workflow run, same activity id) re-binds to its existing child.
CREATE UNIQUE INDEX callbacks_by_parent ON callbacks (workflow_id, run_id, activity_id);
