-- A parent activity retried after its child's failure was delivered runs a new child: the old callback is
-- superseded (kept, but no longer the parent's), and the new execution names the one it retries.
ALTER TABLE executions ADD COLUMN retry_of TEXT;
ALTER TABLE callbacks ADD COLUMN superseded_by TEXT;
DROP INDEX callbacks_by_parent;
CREATE UNIQUE INDEX callbacks_by_current_parent ON callbacks (workflow_id, run_id, activity_id)
    WHERE superseded_by IS NULL;
-- The scheduling a callback answers: a retry keeps it, a new call of the same activity id gets a new one
-- (and a child of its own). NULL for callbacks stored before this column.
ALTER TABLE callbacks ADD COLUMN scheduled_event_id INTEGER;
-- How a direct execution (no callback) ended, and its result: executions with a callback keep theirs there.
ALTER TABLE executions ADD COLUMN outcome TEXT;
ALTER TABLE executions ADD COLUMN payloads BLOB;
