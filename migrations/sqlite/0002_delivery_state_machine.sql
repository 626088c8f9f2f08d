-- The delivery state machine: armed -> due -> delivering -> delivered | gone (with a reason) | dead
-- (dead-lettered), with backoff between attempts. Runner leases on claimed executions.
ALTER TABLE callbacks ADD COLUMN gone_reason TEXT;
ALTER TABLE callbacks ADD COLUMN next_attempt_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE callbacks ADD COLUMN due_ms INTEGER;
-- A retried parent activity (same workflow run, same activity id) re-binds to its existing child.
CREATE UNIQUE INDEX callbacks_by_parent ON callbacks (workflow_id, run_id, activity_id);

ALTER TABLE executions ADD COLUMN claim_until_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN claim_lease_ms INTEGER NOT NULL DEFAULT 0;
