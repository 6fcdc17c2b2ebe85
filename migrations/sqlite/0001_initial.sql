-- datagate store, SQLite. Keep in step with migrations/postgres/0001_initial.sql: the
-- same tables, columns and constraints; only identity columns differ.

-- One row; bumped by every write in the same transaction, so replicas can tell whether
-- the policy they serve is current.
CREATE TABLE store_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);

-- Users and service accounts share one id space, as in Grafana: a datasource grant to
-- `users/:id` may name either.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    login TEXT NOT NULL,
    email TEXT,
    name TEXT,
    basic_role TEXT,
    roles TEXT NOT NULL DEFAULT '[]',
    is_service_account BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (is_service_account, login)
);

CREATE TABLE teams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_id BIGINT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, user_id)
);

CREATE TABLE service_account_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    service_account_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    UNIQUE (service_account_id, name)
);

CREATE TABLE roles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE role_permissions (
    role_id BIGINT NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    view_name TEXT NOT NULL,
    PRIMARY KEY (role_id, permission, view_name)
);

-- grantee_kind: user (grantee = users.id), team (grantee = teams.id) or builtin
-- (grantee = Viewer | Editor | Admin).
CREATE TABLE datasource_grants (
    datasource_uid TEXT NOT NULL,
    grantee_kind TEXT NOT NULL,
    grantee TEXT NOT NULL,
    permission TEXT NOT NULL,
    PRIMARY KEY (datasource_uid, grantee_kind, grantee)
);

CREATE TABLE rls_filters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- `uid` is the operator's name for the datasource (as in Grafana); `uuid` is generated.
CREATE TABLE datasources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    dialect TEXT NOT NULL,
    tables TEXT NOT NULL DEFAULT '[]',
    deny_unlisted_tables BIGINT NOT NULL DEFAULT 0,
    settings TEXT NOT NULL DEFAULT '{}',
    secure_settings TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_state TEXT,
    after_state TEXT,
    revision BIGINT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at_ms);
CREATE INDEX audit_events_actor ON audit_events (actor);
