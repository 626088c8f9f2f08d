-- The console's reads, from indexes instead of scans of every row: what it watches for change (the latest
-- write of an execution, the latest end of a delivery), and its pages of executions in the order created.
CREATE INDEX executions_by_update ON executions (updated_ms);
CREATE INDEX callbacks_by_settle ON callbacks (settled_ms);
CREATE INDEX executions_by_created ON executions (created_ms, id);
