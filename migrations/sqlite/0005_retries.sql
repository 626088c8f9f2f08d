-- A parent activity retried after its child's failure was delivered runs a new child: the old callback is
-- superseded (kept, but no longer the parent's), and the new execution names the one it retries.
ALTER TABLE executions ADD COLUMN retry_of TEXT;
ALTER TABLE callbacks ADD COLUMN superseded_by TEXT;
DROP INDEX callbacks_by_parent;
CREATE UNIQUE INDEX callbacks_by_current_parent ON callbacks (workflow_id, run_id, activity_id)
    WHERE superseded_by IS NULL;
