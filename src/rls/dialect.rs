//! What a datasource's dialect decides for row-level security: the parser, how
//! identifiers compare, which functions and relations are off limits, how literals print.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::dialect::{
    Dialect as SqlDialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect,
};

use super::Dialect;

impl Dialect {
    pub(crate) fn parser_dialect(self) -> Box<dyn SqlDialect> {
        match self {
            Dialect::Postgres => Box::new(PostgreSqlDialect {}),
            Dialect::Mysql => Box::new(MySqlDialect {}),
            Dialect::Sqlite => Box::new(SQLiteDialect {}),
            Dialect::Generic => Box::new(GenericDialect {}),
        }
    }

    /// The schema an unqualified table name resolves in on an ordinary setup (SQLite's
    /// `main`, PostgreSQL's `public`); `None` where it depends on the connection.
    pub fn default_schema(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => Some("main"),
            Dialect::Postgres => Some("public"),
            Dialect::Mysql | Dialect::Generic => None,
        }
    }

    /// The name as the database resolves it: PostgreSQL folds unquoted names to lower
    /// case and keeps quoted ones exact; SQLite, MySQL (table names, on the common
    /// case-insensitive setups) and the generic dialect compare without case.
    pub(crate) fn resolved_name(self, ident: &Ident) -> String {
        match (self, ident.quote_style) {
            (Dialect::Postgres, Some(_)) => ident.value.clone(),
            _ => ident.value.to_lowercase(),
        }
    }

    /// Whether a name inside a CTE body resolves against every CTE of its `WITH` (its own
    /// and later ones), even without `RECURSIVE`; elsewhere only earlier CTEs (and its own,
    /// with `RECURSIVE`) are visible.
    pub(crate) fn cte_body_sees_every_cte(self) -> bool {
        matches!(self, Dialect::Sqlite)
    }

    /// Functions that run SQL from text, read files or other relations, or stall the
    /// database; compared by last name part, case-insensitively.
    pub(crate) fn default_denied_functions(self) -> Vec<String> {
        let postgres = [
            "query_to_xml",
            "query_to_xml_and_xmlschema",
            "query_to_xmlschema",
            "table_to_xml",
            "table_to_xml_and_xmlschema",
            "table_to_xmlschema",
            "cursor_to_xml",
            "cursor_to_xmlschema",
            "database_to_xml",
            "database_to_xml_and_xmlschema",
            "schema_to_xml",
            "schema_to_xml_and_xmlschema",
            "dblink",
            "dblink_exec",
            "dblink_open",
            "dblink_fetch",
            "dblink_send_query",
            "lo_import",
            "lo_export",
            "lo_get",
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "pg_stat_file",
            "pg_sleep",
            "pg_sleep_for",
            "pg_sleep_until",
            "set_config",
            "pg_terminate_backend",
            "pg_cancel_backend",
        ];
        let sqlite = [
            "load_extension",
            "readfile",
            "writefile",
            "fts3_tokenizer",
            "edit",
        ];
        let mysql = ["load_file", "sys_exec", "sys_eval", "sleep", "benchmark"];
        let list: Vec<&str> = match self {
            Dialect::Postgres => postgres.to_vec(),
            Dialect::Sqlite => sqlite.to_vec(),
            Dialect::Mysql => mysql.to_vec(),
            Dialect::Generic => postgres
                .iter()
                .chain(sqlite.iter())
                .chain(mysql.iter())
                .copied()
                .collect(),
        };
        list.into_iter().map(str::to_string).collect()
    }

    /// SQLite's `pragma_*` table-valued functions read schema and settings.
    pub(crate) fn denies_function_prefix(self, lower_name: &str) -> bool {
        matches!(self, Dialect::Sqlite | Dialect::Generic) && lower_name.starts_with("pragma_")
    }

    /// A complete single-quoted literal token that the dialect's lexer reads back as
    /// exactly `value`: every quote doubled, and for MySQL (where a backslash escapes)
    /// every backslash doubled too.
    pub(crate) fn quote_literal(self, value: &str) -> String {
        let escaped = match self {
            Dialect::Mysql => value.replace('\\', "\\\\"),
            _ => value.to_string(),
        };
        format!("'{}'", escaped.replace('\'', "''"))
    }
}

/// Identifier parts of a name, or `None` when a part is not a plain identifier.
pub(crate) fn name_parts(name: &ObjectName) -> Option<Vec<&Ident>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(ident),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// Catalog and metadata relations: schema parts and well-known table names.
pub(crate) fn is_catalog_relation(parts: &[String]) -> bool {
    const CATALOG_SCHEMAS: [&str; 5] = [
        "information_schema",
        "pg_catalog",
        "mysql",
        "performance_schema",
        "sys",
    ];
    // `dbstat` (SQLite's page statistics) reveals per-table row and page counts.
    const CATALOG_TABLES: [&str; 5] = [
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
        "dbstat",
    ];
    let Some(last) = parts.last() else {
        return false;
    };
    let last = last.to_lowercase();
    parts
        .iter()
        .rev()
        .skip(1)
        .any(|schema| CATALOG_SCHEMAS.contains(&schema.to_lowercase().as_str()))
        || CATALOG_TABLES.contains(&last.as_str())
        || last.starts_with("pg_")
        || last.starts_with("sqlite_")
}
