-- The labels of an execution (`metadata.labels`), as a JSON object; NULL when it has none. Listing filters
-- on them (a webhook sender finds its execution by its own run id).
ALTER TABLE executions ADD COLUMN labels TEXT;
