-- The parent activity's heartbeat timeout, recorded when the caller defers: the pump heartbeats at a
-- third of it. NULL when the parent has none (the pump then uses its default interval).
ALTER TABLE callbacks ADD COLUMN heartbeat_timeout_ms INTEGER;
