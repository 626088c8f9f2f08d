-- Who this store is: a capability names the store it was granted for (so it does not replay in another
-- store that shares its key), and without configured capability keys it is signed with the store's own key.
-- One row, written by the first process to open the store (`SqlStore::identity`).
CREATE TABLE store_identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id TEXT NOT NULL,
    capability_key BYTEA NOT NULL
);
