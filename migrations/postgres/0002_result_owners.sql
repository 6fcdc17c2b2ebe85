-- Who ran the SQL Lab query behind a results id (`client_id`): results, export and
-- streaming export of that id are refused to anyone else. Rows expire; expired rows are
-- taken over by the next claim and swept on write.
CREATE TABLE result_owners (
    result_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX result_owners_expiry ON result_owners (expires_at);
