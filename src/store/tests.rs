//! Store unit tests on both backends: SQLite always, PostgreSQL when
//! `DATAGATE_TEST_PG_URL` is set (each run in a database of its own).

use super::*;
use crate::principal::BasicRole;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh, migrated store per backend available here.
pub(crate) async fn stores(directory: &Path) -> Vec<Store> {
    let mut stores = vec![
        Store::connect_url(
            &format!("sqlite://{}?mode=rwc", directory.join("store.db").display()),
            4,
        )
        .await
        .unwrap(),
    ];
    if let Ok(url) = std::env::var("DATAGATE_TEST_PG_URL") {
        stores.push(fresh_postgres(&url).await);
    }
    stores
}

pub(crate) async fn fresh_postgres(url: &str) -> Store {
    sqlx::any::install_default_drivers();
    let name = format!("datagate_unit_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    Store::connect_url(&format!("{base}/{name}"), 4)
        .await
        .unwrap()
}

/// Without a base revision every write hands its build the whole store.
fn accept(update: StoreUpdate) -> Result<StoreContents, crate::state::SnapshotError> {
    match update {
        StoreUpdate::Full(contents) => Ok(*contents),
        StoreUpdate::Delta(delta) => panic!("a write without a base got a delta: {delta:?}"),
    }
}

#[test]
fn grants_round_trip_and_bump_the_revision_on_every_backend() {
    let directory = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for store in stores(directory.path()).await {
            let backend = store.backend();
            assert_eq!(store.revision().await.unwrap(), 0, "{backend:?}");
            let (created, _) = store
                .apply(
                    "admin",
                    Change::CreateUser {
                        input: UserInput {
                            login: "alice".into(),
                            email: Some("alice@example.com".into()),
                            name: None,
                            basic_role: Some("editor".into()),
                            roles: vec!["Gamma".into()],
                        },
                        service_account: false,
                    },
                    None,
                    accept,
                )
                .await
                .unwrap();
            let alice = created.created_id.unwrap();
            let (_, contents) = store
                .apply(
                    "admin",
                    Change::SetDatasourcePermission {
                        datasource_uid: "demo".into(),
                        grantee: Grantee::User(alice),
                        level: Some("Query".into()),
                    },
                    None,
                    accept,
                )
                .await
                .unwrap();
            assert_eq!(contents.revision, 2, "{backend:?}");
            assert_eq!(store.revision().await.unwrap(), 2);
            let lines = contents.subject_lines();
            assert_eq!(
                lines[0].lines[0].line.fields(),
                vec!["p", "user:alice", "datasources:uid:demo", "Query"]
            );
            let (subject, identity) = contents.identity(alice).unwrap();
            assert_eq!(subject, "user:alice");
            assert_eq!(identity.basic_role, Some(BasicRole::Editor));
            assert_eq!(identity.roles, vec!["Gamma".to_string()]);

            // Revoke, then the grant is gone.
            let (_, contents) = store
                .apply(
                    "admin",
                    Change::SetDatasourcePermission {
                        datasource_uid: "demo".into(),
                        grantee: Grantee::User(alice),
                        level: None,
                    },
                    None,
                    accept,
                )
                .await
                .unwrap();
            assert_eq!(contents.grant_count(), 0, "{backend:?}");

            // A rejected change leaves nothing behind: not the row, not the revision, not
            // the audit event.
            let before = store.load().await.unwrap();
            let error = store
                .apply(
                    "admin",
                    Change::CreateTeam {
                        name: "eng".into(),
                        email: None,
                    },
                    None,
                    |_| -> Result<(), _> {
                        Err(crate::state::SnapshotError::Read {
                            path: "test".into(),
                            message: "refused by the test".into(),
                        })
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Rejected(_)), "{error}");
            assert_eq!(store.load().await.unwrap(), before, "{backend:?}");
            let audit = store.audit_events(&AuditQuery::default()).await.unwrap();
            assert_eq!(audit.total_count, 3, "{backend:?}");
            assert_eq!(audit.items[0].action, "datasource_permission.set");
            assert!(audit.items[0].after.is_none());
            assert_eq!(
                audit.items[0].before.as_ref().unwrap()["permission"],
                "Query"
            );

            // Unknown ids and duplicate names are clear errors.
            let error = store
                .apply(
                    "admin",
                    Change::SetDatasourcePermission {
                        datasource_uid: "demo".into(),
                        grantee: Grantee::Team(999),
                        level: Some("Edit".into()),
                    },
                    None,
                    accept,
                )
                .await
                .unwrap_err();
            assert_eq!(error.to_string(), "team `999` not found");
            let duplicate = Change::CreateUser {
                input: UserInput {
                    login: "alice".into(),
                    email: None,
                    name: None,
                    basic_role: None,
                    roles: vec![],
                },
                service_account: false,
            };
            let error = store
                .apply("admin", duplicate, None, accept)
                .await
                .unwrap_err();
            assert!(
                matches!(error, StoreError::Conflict(_)),
                "{backend:?}: {error}"
            );
        }
    });
}

#[test]
fn pagination_reports_totals() {
    let directory = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for store in stores(directory.path()).await {
            for index in 0..5 {
                store
                    .apply(
                        "admin",
                        Change::CreateTeam {
                            name: format!("team-{index}"),
                            email: None,
                        },
                        None,
                        accept,
                    )
                    .await
                    .unwrap();
            }
            let page = store
                .list_teams(PageRequest {
                    page: 2,
                    page_size: 2,
                })
                .await
                .unwrap();
            assert_eq!(page.count, 2);
            assert_eq!(page.total_count, 5);
            assert_eq!(page.total_pages, 3);
            assert!(page.has_next && page.has_previous);
            assert_eq!(page.items[0].name, "team-2");
            let last = store
                .list_teams(PageRequest {
                    page: 3,
                    page_size: 2,
                })
                .await
                .unwrap();
            assert_eq!((last.count, last.has_next), (1, false));
            assert!(
                store
                    .list_teams(PageRequest {
                        page: 0,
                        page_size: 2
                    })
                    .await
                    .is_err()
            );
        }
    });
}

#[test]
fn urls_resolve_relative_sqlite_paths_and_refuse_others() {
    let config = |url: &str| StoreConfig {
        url: Some(url.into()),
        url_env: None,
        max_connections: 1,
        poll_interval: Duration::from_secs(1),
        max_staleness: Duration::from_secs(5),
    };
    assert_eq!(
        config("sqlite:data/x.db")
            .resolve_url(Path::new("/etc/datagate"))
            .unwrap(),
        "sqlite:///etc/datagate/data/x.db?mode=rwc"
    );
    assert!(config("mysql://x").resolve_url(Path::new("/")).is_err());
    assert!(
        config("sqlite::memory:")
            .resolve_url(Path::new("/"))
            .is_err()
    );
    assert_eq!(
        redact(
            "error connecting to postgresql://admin:hunter2@db/x",
            "postgresql://admin:hunter2@db/x"
        ),
        "error connecting to <store url>"
    );
}
