-- Every datasource grant gets an id of its own (Grafana's permission item `id`). A grant
-- keeps its id while it exists, through permission changes; AUTOINCREMENT never hands a
-- revoked grant's id to another, so an id a client holds never names a different grant.
-- Keep in step with migrations/postgres/0003_grant_ids.sql.
CREATE TABLE datasource_grants_with_ids (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    datasource_uid TEXT NOT NULL,
    grantee_kind TEXT NOT NULL,
    grantee TEXT NOT NULL,
    permission TEXT NOT NULL,
    UNIQUE (datasource_uid, grantee_kind, grantee)
);
INSERT INTO datasource_grants_with_ids (datasource_uid, grantee_kind, grantee, permission)
    SELECT datasource_uid, grantee_kind, grantee, permission FROM datasource_grants
    ORDER BY datasource_uid, grantee_kind, grantee;
DROP TABLE datasource_grants;
ALTER TABLE datasource_grants_with_ids RENAME TO datasource_grants;
