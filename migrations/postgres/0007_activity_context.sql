-- What the worker's data converter needs to know of the parent activity (its serialization context:
-- namespace, workflow and activity types, task queue), recorded at defer as a JSON object, since the
-- token lacks the task queue and the namespace's name; and a failure as the worker's failure converter
-- encoded it (`temporal.api.failure.v1.Failure`), sent to the parent as it is.
ALTER TABLE callbacks ADD COLUMN activity_context TEXT;
ALTER TABLE callbacks ADD COLUMN failure BYTEA;
