//! The demo schema and rows, and the row-level security oracle for the demo filters
//! (`policies/50-demo.rls.yaml`): a copy of the database holding only a caller's
//! permitted rows, built with bound parameters, independently of the rewriter.

use serde_json::{Value, json};

pub const SCHEMA: &str = "
CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id TEXT, customer_id INTEGER,
                     amount REAL, note TEXT, region TEXT, parent INTEGER);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, region TEXT);
CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT);
";

pub const ROWS: &str = "
INSERT INTO orders VALUES
  (1,'alice',1,10,'a1','EU',NULL),(2,'alice',2,20,'internal','EU',1),
  (3,'bob',3,300,'b1','US',NULL),(4,'bob',1,4000000,'b2','US',3),
  (5,'carol',2,50,'c1','EU',NULL),(6,'O''Brien',3,60,'o1','US',NULL),
  (7,'x'' OR ''1''=''1',1,70,'x1','EU',NULL);
INSERT INTO customers VALUES (1,'Acme','EU'),(2,'Globex','US'),(3,'Initech','EU');
INSERT INTO posts VALUES (1,'hello'),(2,'world');
";

pub struct Caller {
    pub name: &'static str,
    pub roles: &'static [&'static str],
}

/// The demo filters (policies/50-demo.rls.yaml), evaluated independently: which rows of
/// each protected table `caller` may see.
pub fn oracle(caller: &Caller) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open_in_memory().unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    connection.execute_batch(ROWS).unwrap();
    let has = |role: &str| caller.roles.contains(&role);
    if has("Gamma") {
        connection
            .execute(
                "DELETE FROM orders WHERE NOT (tenant_id = ?1)",
                [caller.name],
            )
            .unwrap();
    }
    if !has("Admin") {
        connection
            .execute("DELETE FROM orders WHERE NOT (note <> 'internal')", [])
            .unwrap();
    }
    let mut regions = Vec::new();
    if has("EU_team") {
        regions.push("region = 'EU'");
    }
    if has("US_team") {
        regions.push("region = 'US'");
    }
    if !regions.is_empty() {
        connection
            .execute(
                &format!("DELETE FROM customers WHERE NOT ({})", regions.join(" OR ")),
                [],
            )
            .unwrap();
    }
    connection
}

pub fn rows_of(connection: &rusqlite::Connection, sql: &str) -> Result<Vec<Vec<Value>>, String> {
    let mut statement = connection.prepare(sql).map_err(|error| error.to_string())?;
    let width = statement.column_count();
    let mut rows = statement.query([]).map_err(|error| error.to_string())?;
    let mut result = Vec::new();
    while let Some(row) = rows.next().map_err(|error| error.to_string())? {
        result.push(
            (0..width)
                .map(|index| match row.get_ref(index).unwrap() {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(number) => json!(number),
                    rusqlite::types::ValueRef::Real(number) => json!(number),
                    rusqlite::types::ValueRef::Text(text) => json!(String::from_utf8_lossy(text)),
                    rusqlite::types::ValueRef::Blob(_) => Value::Null,
                })
                .collect(),
        );
    }
    Ok(result)
}

pub fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<String> {
    let mut keys: Vec<String> = rows
        .drain(..)
        .map(|row| serde_json::to_string(&row).unwrap())
        .collect();
    keys.sort();
    keys
}
