-- Every hot query served by an index that matches it, so its cost grows with what it returns, not with
-- the table (issue "a million executions"): listings by kind, phase and both, in creation order with the
-- id as tie-breaker (key paging); claims and the reconciler's expired claims by phase and claim time;
-- listings by callback state in creation order (a callback is created with its execution, same time).
DROP INDEX executions_by_phase;
CREATE INDEX executions_by_kind_phase ON executions (kind, phase, created_ms, id);
CREATE INDEX executions_by_phase ON executions (phase, created_ms, id);
CREATE INDEX executions_by_kind ON executions (kind, created_ms, id);
CREATE INDEX executions_by_claim ON executions (phase, claim_until_ms);
CREATE INDEX callbacks_by_state_created ON callbacks (state, created_ms, execution_id);
