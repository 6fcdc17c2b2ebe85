//! The rewrite: wrap every reference to a protected table in a filtering subquery, then
//! prove it by re-parsing the printed SQL and checking every reference again.
//!
//! One visitor walks the whole statement (sqlparser's `VisitorMut` reaches every
//! subquery, wherever it is). CTE scoping is tracked on the side: a `WITH` pushes a frame
//! of names; while a CTE's own body is visited only the earlier CTEs (and itself, for
//! `RECURSIVE`, or in SQLite) are visible. When in doubt a name is treated as the real
//! table, because wrapping a CTE reference only filters more, while skipping a real table
//! would leak.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableAlias, TableFactor, Visit, VisitMut, Visitor,
    VisitorMut,
};

use super::dialect::{is_catalog_relation, name_parts};
use super::{Dialect, RlsError};

/// What the walk needs to know about a datasource and a caller.
pub(crate) trait TableRules {
    fn dialect(&self) -> Dialect;
    /// `Some(predicate)` when `parts` (resolved, lower-cased) is protected for this caller.
    fn predicate_for(&self, parts: &[String]) -> Option<Result<Expr, RlsError>>;
    /// Whether `selection` is exactly the predicate `parts` must be filtered by, built
    /// with plain literal values (what a re-parse of the printed SQL reads back).
    fn is_expected_predicate(&self, parts: &[String], selection: &Expr) -> bool;
    /// Some filter applies to `parts` for this caller (so every reference must be wrapped).
    fn is_protected_for_caller(&self, parts: &[String]) -> bool;
    /// Any filter at all names this table (whether or not it applies to this caller).
    fn is_protected_for_anyone(&self, parts: &[String]) -> bool;
    fn is_denied_function(&self, lower_name: &str) -> bool;
    fn has_filters(&self) -> bool;
    /// `Some(false)` when tables are listed and this one is not.
    fn is_listed(&self, parts: &[String]) -> bool;
    /// The wrapper `SELECT * FROM <table> WHERE <predicate>` to fill in.
    fn wrapper_prototype(&self) -> &Query;
}

struct Frame {
    names: Vec<String>,
    recursive: bool,
    /// How many of `names` are visible now (all, except inside a CTE body).
    visible: usize,
    /// Inside the body of CTE `own`, whether that CTE's own name is visible.
    own_visible: Option<usize>,
    bodies: Vec<*const Query>,
}

/// CTE scopes while walking.
struct Scopes {
    frames: Vec<Frame>,
    /// The CTE bodies being tracked: address → (frame, position).
    bodies: HashMap<*const Query, (usize, usize)>,
    dialect: Dialect,
}

impl Scopes {
    fn new(dialect: Dialect) -> Scopes {
        Scopes {
            frames: Vec::new(),
            bodies: HashMap::new(),
            dialect,
        }
    }

    fn enter(&mut self, query: &Query) {
        if let Some(&(frame, position)) = self.bodies.get(&(query as *const Query)) {
            let sees_whole_with = self.dialect.cte_body_sees_every_cte();
            if let Some(frame) = self.frames.get_mut(frame) {
                if sees_whole_with {
                    // SQLite resolves a name in a CTE body against every CTE of the same
                    // WITH, its own and later ones included.
                    frame.visible = frame.names.len();
                } else {
                    frame.visible = position;
                    frame.own_visible = frame.recursive.then_some(position);
                }
            }
        }
        if let Some(with) = &query.with {
            let index = self.frames.len();
            let mut bodies = Vec::with_capacity(with.cte_tables.len());
            for (position, cte) in with.cte_tables.iter().enumerate() {
                let address = &*cte.query as *const Query;
                self.bodies.insert(address, (index, position));
                bodies.push(address);
            }
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|cte| self.dialect.resolved_name(&cte.alias.name))
                .collect();
            self.frames.push(Frame {
                visible: names.len(),
                names,
                recursive: with.recursive,
                own_visible: None,
                bodies,
            });
        }
    }

    fn leave(&mut self, query: &Query) {
        if query.with.is_some()
            && let Some(frame) = self.frames.pop()
        {
            for body in frame.bodies {
                self.bodies.remove(&body);
            }
        }
        if let Some(&(frame, _)) = self.bodies.get(&(query as *const Query))
            && let Some(frame) = self.frames.get_mut(frame)
        {
            frame.visible = frame.names.len();
            frame.own_visible = None;
        }
    }

    /// Whether an unqualified name refers to a visible CTE.
    fn is_cte(&self, name: &ObjectName) -> bool {
        if self.frames.is_empty() {
            return false;
        }
        let Some(parts) = name_parts(name) else {
            return false;
        };
        let [ident] = parts.as_slice() else {
            return false;
        };
        let resolved = self.dialect.resolved_name(ident);
        self.frames.iter().rev().any(|frame| {
            frame
                .names
                .iter()
                .take(frame.visible)
                .any(|name| *name == resolved)
                || frame
                    .own_visible
                    .and_then(|own| frame.names.get(own))
                    .is_some_and(|name| *name == resolved)
        })
    }
}

/// Lower-cased name parts for matching against filter and listed tables.
fn lower_parts(name: &ObjectName) -> Option<Vec<String>> {
    name_parts(name).map(|parts| {
        parts
            .iter()
            .map(|ident| ident.value.to_lowercase())
            .collect()
    })
}

fn function_name(name: &ObjectName) -> Option<String> {
    name_parts(name)?
        .last()
        .map(|ident| ident.value.to_lowercase())
}

/// Checks a query's own body shape (subqueries are visited on their own).
fn check_set_expr(
    set_expr: &SetExpr,
    allow_writes: bool,
    rules: &dyn TableRules,
) -> Result<(), RlsError> {
    match set_expr {
        SetExpr::Select(select) => {
            if select.into.is_some() {
                return Err(RlsError::StatementNotAllowed("SELECT … INTO".into()));
            }
            Ok(())
        }
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left, allow_writes, rules)?;
            check_set_expr(right, allow_writes, rules)
        }
        SetExpr::Query(_) | SetExpr::Values(_) => Ok(()),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            if allow_writes {
                Ok(())
            } else {
                Err(RlsError::StatementNotAllowed(
                    "data-modifying statement inside a query".into(),
                ))
            }
        }
        SetExpr::Table(table) => {
            let name = table.table_name.clone().unwrap_or_default();
            let parts: Vec<String> = table
                .schema_name
                .iter()
                .chain(std::iter::once(&name))
                .map(|part| part.to_lowercase())
                .collect();
            if rules.is_protected_for_anyone(&parts) || !rules.is_listed(&parts) {
                return Err(RlsError::StatementNotAllowed(format!(
                    "`TABLE {name}` on a protected or unlisted table"
                )));
            }
            Ok(())
        }
    }
}

/// Keywords some databases accept in front of a table name that the parser would take as
/// the table's name instead.
const MODIFIER_KEYWORDS: [&str; 3] = ["ONLY", "FINAL", "STRAIGHT_JOIN"];

/// Pass 1: checks and wrapping.
struct Rewriter<'r> {
    rules: &'r dyn TableRules,
    scopes: Scopes,
    allow_writes: bool,
    /// Protected tables wrapped: (table, resolved parts).
    wrapped: Vec<Vec<String>>,
}

impl Rewriter<'_> {
    fn check_relation(&self, name: &ObjectName) -> Result<Option<Vec<String>>, RlsError> {
        if self.scopes.is_cte(name) {
            return Ok(None);
        }
        let parts = lower_parts(name).ok_or_else(|| {
            RlsError::StatementNotAllowed(format!("computed table name `{name}`"))
        })?;
        // `FROM ONLY orders` is PostgreSQL's inheritance modifier, but the parser reads a
        // table called `ONLY` aliased `orders`: the two would disagree about the table.
        let modifier = name_parts(name).is_some_and(|idents| {
            idents.iter().any(|ident| {
                ident.quote_style.is_none()
                    && MODIFIER_KEYWORDS.contains(&ident.value.to_uppercase().as_str())
            })
        });
        if modifier {
            return Err(RlsError::StatementNotAllowed(format!(
                "table modifier `{name}`"
            )));
        }
        if self.rules.has_filters() && is_catalog_relation(&parts) {
            return Err(RlsError::CatalogAccess(name.to_string()));
        }
        if !self.rules.is_listed(&parts) {
            return Err(RlsError::UnlistedTable(name.to_string()));
        }
        Ok(Some(parts))
    }
}

impl VisitorMut for Rewriter<'_> {
    type Break = RlsError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<RlsError> {
        if let Err(error) = check_set_expr(&query.body, self.allow_writes, self.rules) {
            return ControlFlow::Break(error);
        }
        self.scopes.enter(query);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<RlsError> {
        self.scopes.leave(query);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expression: &mut Expr) -> ControlFlow<RlsError> {
        if let Expr::Function(function) = expression
            && let Some(name) = function_name(&function.name)
            && self.rules.is_denied_function(&name)
        {
            return ControlFlow::Break(RlsError::DeniedFunction(name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, table_factor: &mut TableFactor) -> ControlFlow<RlsError> {
        match table_factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                // A table-valued function call (`pragma_table_info('t')`, `generate_series`).
                let lower = function_name(name).unwrap_or_default();
                if self.rules.is_denied_function(&lower) {
                    return ControlFlow::Break(RlsError::DeniedFunction(lower));
                }
                if let Some(parts) = lower_parts(name)
                    && (self.rules.is_protected_for_anyone(&parts)
                        || (self.rules.has_filters() && is_catalog_relation(&parts)))
                {
                    return ControlFlow::Break(RlsError::StatementNotAllowed(format!(
                        "`{name}` called as a function"
                    )));
                }
            }
            TableFactor::Function { name, .. } => {
                if let Some(lower) = function_name(name)
                    && self.rules.is_denied_function(&lower)
                {
                    return ControlFlow::Break(RlsError::DeniedFunction(lower));
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    /// Wrapping happens after the children are visited, so the new subquery is never
    /// walked (and wrapped) again.
    fn post_visit_table_factor(&mut self, table_factor: &mut TableFactor) -> ControlFlow<RlsError> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = table_factor
        else {
            return ControlFlow::Continue(());
        };
        let parts = match self.check_relation(name) {
            Ok(Some(parts)) => parts,
            Ok(None) => return ControlFlow::Continue(()),
            Err(error) => return ControlFlow::Break(error),
        };
        let predicate = match self.rules.predicate_for(&parts) {
            None => return ControlFlow::Continue(()),
            Some(Ok(predicate)) => predicate,
            Some(Err(error)) => return ControlFlow::Break(error),
        };
        let Some(last) =
            name_parts(name).and_then(|parts| parts.last().map(|ident| (*ident).clone()))
        else {
            return ControlFlow::Continue(());
        };
        // The user's alias moves outside, or the table's own name becomes the alias, so
        // `o.id` and `orders.id` keep resolving.
        let outer_alias = alias.take().unwrap_or(TableAlias {
            explicit: true,
            name: last,
            columns: Vec::new(),
            at: None,
        });
        let inner = std::mem::replace(
            table_factor,
            TableFactor::Derived {
                lateral: false,
                subquery: Box::new(self.rules.wrapper_prototype().clone()),
                alias: None,
                sample: None,
            },
        );
        if let TableFactor::Derived {
            subquery, alias, ..
        } = table_factor
        {
            *alias = Some(outer_alias);
            if let SetExpr::Select(select) = subquery.body.as_mut()
                && let Some(from) = select.from.first_mut()
            {
                from.relation = inner;
                select.selection = Some(predicate);
            }
        }
        self.wrapped.push(parts);
        ControlFlow::Continue(())
    }
}

/// Rewrites one parsed statement in place; returns the protected tables it wrapped.
pub(crate) fn rewrite_statement(
    statement: &mut Statement,
    rules: &dyn TableRules,
    allow_writes: bool,
) -> Result<Vec<Vec<String>>, RlsError> {
    let is_write = match statement {
        Statement::Query(_) => false,
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
            if allow_writes =>
        {
            true
        }
        other => return Err(RlsError::StatementNotAllowed(statement_kind(other))),
    };
    let mut rewriter = Rewriter {
        rules,
        scopes: Scopes::new(rules.dialect()),
        allow_writes,
        wrapped: Vec::new(),
    };
    if is_write {
        // Any protected relation anywhere in a write is refused before anything else.
        let mut protected = None;
        let _ = sqlparser::ast::visit_relations(statement, |relation| {
            if let Some(parts) = lower_parts(relation)
                && rules.is_protected_for_anyone(&parts)
            {
                protected = Some(relation.to_string());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        if let Some(relation) = protected {
            return Err(RlsError::StatementNotAllowed(format!(
                "a write involving protected table `{relation}`"
            )));
        }
    }
    match VisitMut::visit(statement, &mut rewriter) {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(rewriter.wrapped),
    }
}

fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second] if matches!(first.to_uppercase().as_str(), "CREATE" | "DROP" | "ALTER") => {
            format!("{} {}", first.to_uppercase(), second.to_uppercase())
        }
        [first, ..] => first.to_uppercase(),
        [] => "statement".to_string(),
    }
}

/// Pass 2, on the re-parsed output: every protected reference must be the table of a
/// wrapper whose predicate is exactly the expected one.
struct Verifier<'r> {
    rules: &'r dyn TableRules,
    scopes: Scopes,
    /// Tables proven wrapped, by address in the re-parsed tree.
    verified: HashSet<*const TableFactor>,
    failure: Option<String>,
}

impl Visitor for Verifier<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.scopes.enter(query);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.scopes.leave(query);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, table_factor: &TableFactor) -> ControlFlow<()> {
        let TableFactor::Derived { subquery, .. } = table_factor else {
            return ControlFlow::Continue(());
        };
        let SetExpr::Select(select) = subquery.body.as_ref() else {
            return ControlFlow::Continue(());
        };
        let ([from], Some(selection)) = (select.from.as_slice(), &select.selection) else {
            return ControlFlow::Continue(());
        };
        let TableFactor::Table {
            name,
            alias: None,
            args: None,
            ..
        } = &from.relation
        else {
            return ControlFlow::Continue(());
        };
        if !from.joins.is_empty() || subquery.with.is_some() || self.scopes.is_cte(name) {
            return ControlFlow::Continue(());
        }
        if let Some(parts) = lower_parts(name)
            && self.rules.is_expected_predicate(&parts, selection)
        {
            self.verified.insert(&from.relation as *const TableFactor);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, table_factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, args: None, ..
        } = table_factor
            && !self.scopes.is_cte(name)
            && let Some(parts) = lower_parts(name)
            && self.rules.is_protected_for_caller(&parts)
            && !self
                .verified
                .contains(&(table_factor as *const TableFactor))
        {
            self.failure = Some(name.to_string());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Ok when every protected table in `statement` is wrapped with its expected predicate.
pub(crate) fn verify_statement(
    statement: &Statement,
    rules: &dyn TableRules,
) -> Result<(), RlsError> {
    let mut verifier = Verifier {
        rules,
        scopes: Scopes::new(rules.dialect()),
        verified: HashSet::new(),
        failure: None,
    };
    let _ = Visit::visit(statement, &mut verifier);
    match verifier.failure {
        Some(table) => Err(RlsError::VerificationFailed(table)),
        None => Ok(()),
    }
}
