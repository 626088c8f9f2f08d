-- Executions of both kinds, and the callback (outbox row) that goes with each token.
-- The token lives only in callbacks.token: the stored status blob never holds it, so no ordinary read
-- can return it, and clearing it is one column update.
CREATE TABLE executions (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('agent', 'workflow')),
    phase       INTEGER NOT NULL,
    spec        BLOB NOT NULL,
    status      BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX executions_by_phase ON executions (kind, phase, created_ms);

-- state: armed (child running) -> due (outcome recorded, not yet told) -> delivering (claimed under a
-- lease) -> delivered | gone. A delivery that fails goes back to due with last_error.
CREATE TABLE callbacks (
    execution_id     TEXT PRIMARY KEY NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    token            BLOB,
    fingerprint      TEXT NOT NULL,
    workflow_id      TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    activity_id      TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    state            TEXT NOT NULL,
    outcome          TEXT,
    payloads         BLOB,
    failure_message  TEXT,
    failure_type     TEXT,
    non_retryable    INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    lease_until_ms   INTEGER NOT NULL DEFAULT 0,
    created_ms       INTEGER NOT NULL,
    settled_ms       INTEGER
);
CREATE INDEX callbacks_by_state ON callbacks (state, lease_until_ms);
