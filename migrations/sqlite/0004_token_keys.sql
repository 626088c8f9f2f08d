-- Tokens sealed at rest: the id of the key that sealed callbacks.token (NULL: stored as it is).
ALTER TABLE callbacks ADD COLUMN token_key_id TEXT;
