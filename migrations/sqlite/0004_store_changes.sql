-- The change feed: the scopes each revision touched (JSON, see src/store/delta.rs), so a
-- replica re-reads only those rows instead of the whole store. Written in the same
-- transaction as the change; the writers prune rows more than 10,000 revisions old.
-- Keep in step with the other backend's 0004_store_changes.sql.
CREATE TABLE store_changes (
    revision BIGINT PRIMARY KEY,
    scopes TEXT NOT NULL
);

-- Lookups a change makes by grantee and by member (delete a user or team, re-read a
-- user's memberships), which the tables' keys do not serve.
CREATE INDEX datasource_grants_by_grantee ON datasource_grants (grantee_kind, grantee);
CREATE INDEX team_members_by_user ON team_members (user_id);
