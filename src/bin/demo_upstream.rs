//! `datagate-demo-upstream`: the small SQL-over-HTTP service behind datagate in the demo
//! and in every integration test.
//!
//! It executes the SQL it receives on SQLite (Superset SQL Lab-, Grafana- and
//! Datasette-shaped endpoints) and records every request exactly as it arrived, so tests
//! can assert what the upstream saw — and that a refused request never reached it. The
//! recorder lives under `/__recorder/`, which tests call directly, never through datagate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "datagate-demo-upstream",
    about = "SQL-over-HTTP demo upstream with a request recorder"
)]
struct Arguments {
    /// Address to listen on; port 0 picks a free one (printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// SQLite database file; an in-memory database seeded with the demo data when absent.
    #[arg(long)]
    db: Option<PathBuf>,
    /// SQL run at start instead of the demo seed (schema), e.g. a test's oracle fixture.
    #[arg(long)]
    schema_file: Option<PathBuf>,
    /// SQL run after the schema (rows).
    #[arg(long)]
    rows_file: Option<PathBuf>,
    /// Keep no record of requests (load runs: millions of requests would fill memory).
    #[arg(long)]
    no_record: bool,
}

const DEMO_SCHEMA: &str = "
CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id TEXT, customer_id INTEGER,
                     amount REAL, note TEXT, region TEXT, parent INTEGER);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, region TEXT);
CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT);
";

const DEMO_ROWS: &str = "
INSERT INTO orders VALUES
  (1,'alice',1,10,'a1','EU',NULL),(2,'alice',2,20,'internal','EU',1),
  (3,'bob',3,300,'b1','US',NULL),(4,'bob',1,4000000,'b2','US',3),
  (5,'carol',2,50,'c1','EU',NULL),(6,'O''Brien',3,60,'o1','US',NULL);
INSERT INTO customers VALUES (1,'Acme','EU'),(2,'Globex','US'),(3,'Initech','EU');
INSERT INTO posts VALUES (1,'hello'),(2,'world');
";

/// One request as it arrived.
#[derive(Debug, Clone, Serialize)]
struct RecordedRequest {
    method: String,
    path: String,
    query: Option<String>,
    headers: BTreeMap<String, Vec<String>>,
    body_base64: String,
    body_text: String,
    body_length: usize,
    content_length: Option<String>,
}

struct AppState {
    database: Mutex<rusqlite::Connection>,
    recorded: Mutex<Vec<RecordedRequest>>,
    /// SQL Lab client ids that ran, for Superset's results-key polling.
    client_ids: Mutex<Vec<String>>,
    /// `false` under `--no-record`.
    record: bool,
}

type Shared = Arc<AppState>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments = Arguments::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let connection = match &arguments.db {
        Some(path) => rusqlite::Connection::open(path)?,
        None => rusqlite::Connection::open_in_memory()?,
    };
    match (&arguments.schema_file, &arguments.rows_file) {
        (None, None) if arguments.db.is_none() => {
            connection.execute_batch(DEMO_SCHEMA)?;
            connection.execute_batch(DEMO_ROWS)?;
        }
        (schema, rows) => {
            for file in [schema, rows].into_iter().flatten() {
                connection.execute_batch(&std::fs::read_to_string(file)?)?;
            }
        }
    }
    let state = Arc::new(AppState {
        database: Mutex::new(connection),
        recorded: Mutex::new(Vec::new()),
        client_ids: Mutex::new(Vec::new()),
        record: !arguments.no_record,
    });
    let recorder = Router::new()
        .route(
            "/__recorder/requests",
            get(list_recorded).delete(clear_recorded),
        )
        .route("/__recorder/health", get(|| async { "ok" }));
    let service = Router::new()
        .route("/api/v1/sqllab/execute/", post(sqllab_execute))
        .route("/api/v1/query/updated_since", get(queries_updated_since))
        .route("/api/ds/query", post(grafana_query))
        .route("/mcp", post(mcp))
        .route("/{database}", get(datasette))
        .fallback(echo)
        .layer(axum::middleware::from_fn_with_state(state.clone(), record));
    let application = recorder.merge(service).with_state(state);
    let listener = tokio::net::TcpListener::bind(arguments.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, application).await?;
    Ok(())
}

/// Records the request (body included) before any handler sees it.
async fn record(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !state.record {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, format!("body: {error}")).into_response();
        }
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let entry = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        content_length: headers
            .get("content-length")
            .and_then(|values| values.first().cloned()),
        headers,
        body_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        body_text: String::from_utf8_lossy(&bytes).into_owned(),
        body_length: bytes.len(),
    };
    if let Ok(mut recorded) = state.recorded.lock() {
        recorded.push(entry);
    }
    next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn list_recorded(State(state): State<Shared>) -> Response {
    let recorded = state
        .recorded
        .lock()
        .map(|recorded| recorded.clone())
        .unwrap_or_default();
    axum::Json(recorded).into_response()
}

async fn clear_recorded(State(state): State<Shared>) -> StatusCode {
    if let Ok(mut recorded) = state.recorded.lock() {
        recorded.clear();
    }
    StatusCode::NO_CONTENT
}

/// Columns and rows of one statement, values as JSON (blobs as base64).
fn execute(state: &AppState, sql: &str) -> Result<(Vec<String>, Vec<Vec<Value>>), String> {
    let database = state
        .database
        .lock()
        .map_err(|_| "database lock poisoned".to_string())?;
    let mut statement = database.prepare(sql).map_err(|error| error.to_string())?;
    let columns: Vec<String> = statement
        .column_names()
        .iter()
        .map(|name| name.to_string())
        .collect();
    let width = columns.len();
    let mut rows = statement.query([]).map_err(|error| error.to_string())?;
    let mut data = Vec::new();
    while let Some(row) = rows.next().map_err(|error| error.to_string())? {
        let mut values = Vec::with_capacity(width);
        for index in 0..width {
            let value = row.get_ref(index).map_err(|error| error.to_string())?;
            values.push(match value {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(number) => json!(number),
                rusqlite::types::ValueRef::Real(number) => json!(number),
                rusqlite::types::ValueRef::Text(text) => json!(String::from_utf8_lossy(text)),
                rusqlite::types::ValueRef::Blob(blob) => {
                    json!(base64::engine::general_purpose::STANDARD.encode(blob))
                }
            });
        }
        data.push(values);
    }
    Ok((columns, data))
}

fn sql_error(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message})),
    )
        .into_response()
}

async fn sqllab_execute(State(state): State<Shared>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => return sql_error(format!("bad JSON: {error}")),
    };
    let Some(sql) = request.get("sql").and_then(Value::as_str) else {
        return sql_error("missing `sql`".into());
    };
    // As Superset does with a results backend: the stored results' key comes back in
    // `query.resultsKey` (here derived from the client id, so tests can name it); an
    // asynchronous query has none yet, its key appears in `updated_since`.
    let client_id = request.get("client_id").and_then(Value::as_str);
    let run_async = request.get("runAsync").and_then(Value::as_bool) == Some(true);
    if let Some(client_id) = client_id
        && let Ok(mut client_ids) = state.client_ids.lock()
    {
        client_ids.push(client_id.to_string());
    }
    let query = json!({
        "id": client_id,
        "resultsKey": client_id
            .filter(|_| !run_async)
            .map(|client_id| format!("results-{client_id}")),
    });
    match execute(&state, sql) {
        Ok((columns, data)) => {
            axum::Json(json!({"columns": columns, "data": data, "query": query})).into_response()
        }
        Err(error) => sql_error(error),
    }
}

/// Superset's `GET /api/v1/query/updated_since`: every query that ran, with its key.
async fn queries_updated_since(State(state): State<Shared>) -> Response {
    let client_ids = state
        .client_ids
        .lock()
        .map(|client_ids| client_ids.clone())
        .unwrap_or_default();
    let result: Vec<Value> = client_ids
        .iter()
        .map(|client_id| json!({"id": client_id, "resultsKey": format!("results-{client_id}")}))
        .chain(std::iter::once(
            json!({"id": "running", "resultsKey": null}),
        ))
        .collect();
    axum::Json(json!({"result": result})).into_response()
}

async fn grafana_query(State(state): State<Shared>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => return sql_error(format!("bad JSON: {error}")),
    };
    let mut results = serde_json::Map::new();
    for (index, query) in request
        .get("queries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let reference = query
            .get("refId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| index.to_string());
        let result = match query.get("rawSql").and_then(Value::as_str) {
            None => json!({"error": "missing rawSql"}),
            Some(sql) => match execute(&state, sql) {
                Ok((columns, rows)) => json!({"columns": columns, "rows": rows}),
                Err(error) => json!({"error": error}),
            },
        };
        results.insert(reference, result);
    }
    axum::Json(json!({"results": results})).into_response()
}

/// Datasette-style `/{db}.json?sql=` and `/{db}.csv?sql=`.
async fn datasette(
    State(state): State<Shared>,
    Path(database): Path<String>,
    Query(parameters): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let format = if database.ends_with(".json") {
        "json"
    } else if database.ends_with(".csv") {
        "csv"
    } else {
        return echo(method, uri, headers).await;
    };
    let Some(sql) = parameters.get("sql") else {
        return sql_error("missing `sql` parameter".into());
    };
    let (columns, rows) = match execute(&state, sql) {
        Ok(result) => result,
        Err(error) => return sql_error(error),
    };
    if format == "json" {
        return axum::Json(json!({"columns": columns, "rows": rows})).into_response();
    }
    let mut text = columns.join(",");
    text.push('\n');
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|value| match value {
                Value::String(text) => format!("\"{}\"", text.replace('"', "\"\"")),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"result.csv\"",
            ),
        ],
        text,
    )
        .into_response()
}

/// A stand-in MCP (JSON-RPC) endpoint: answers every request with a result naming the
/// method and tool it received.
async fn mcp(body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    axum::Json(json!({
        "jsonrpc": "2.0",
        "id": request.get("id").cloned().unwrap_or(Value::Null),
        "result": {
            "content": [{"type": "text", "text": format!(
                "demo upstream received `{}` for tool `{}`",
                request.get("method").and_then(Value::as_str).unwrap_or_default(),
                request.pointer("/params/name").and_then(Value::as_str).unwrap_or_default(),
            )}],
        },
    }))
    .into_response()
}

/// Everything else: 200 with what arrived, including the identity headers datagate set.
/// `?demo_content_type=…` (and `&demo_disposition=attachment`) make it answer as a
/// download instead, so tests and the demo can show the response-side export guard.
async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let demo_parameters: BTreeMap<String, String> = uri
        .query()
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(content_type) = demo_parameters.get("demo_content_type") {
        let mut response = (
            StatusCode::OK,
            "region,revenue\nEU,100\nUS,200\n-- a download datagate must not let through --\n"
                .repeat(64),
        )
            .into_response();
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        if let Some(disposition) = demo_parameters.get("demo_disposition")
            && let Ok(value) = disposition.parse()
        {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
        return response;
    }
    let header = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
    };
    axum::Json(json!({
        "ok": true,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "x-datagate-user": header("x-datagate-user"),
        "x-datagate-roles": header("x-datagate-roles"),
        "x-datagate-teams": header("x-datagate-teams"),
        "x-forwarded-for": header("x-forwarded-for"),
        "x-forwarded-proto": header("x-forwarded-proto"),
    }))
    .into_response()
}
