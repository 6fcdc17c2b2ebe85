//! SQL fragments: the expressions a Superset query context carries (`sqlExpression` of
//! metrics, columns and filters, `extras.where` / `having`, custom group-by SQL), which
//! Superset pastes into the SQL it generates for a chart. Called by
//! [`crate::chart_data`] after authorization, with the dataset's datasource.
//!
//! A fragment is one expression of the datasource's dialect and nothing else: it is
//! tokenised and parsed by the same parser as SQL Lab SQL, with the same operator and
//! nesting limits; comments, `;`, template syntax, any subquery (so no relation at all)
//! and the datasource's denied functions are refused. What goes upstream is the parsed
//! expression printed again, so the upstream never reads text datagate did not parse.
//!
//! [`RlsPolicy::filtered_where`] is the injection: the caller's predicate for the
//! dataset's table, ANDed to the user's `WHERE` as `(<user>) AND (<predicate>)`, printed,
//! re-parsed and verified to be exactly that shape with exactly the expected predicate.

use std::ops::ControlFlow;

use sqlparser::ast::{BinaryOperator, Expr, ObjectName, Query, Visit, Visitor};
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use super::template::LiteralMode;
use super::{
    AppliedFilter, CallerRules, DatasourceRules, Principal, RewriteLimits, RlsError, RlsPolicy,
    TablePattern, check_operator_count, rewrite::TableRules,
};

/// The `WHERE` a query must carry: `None` when there is neither a user condition nor a
/// filter for the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct FilteredWhere {
    pub sql: Option<String>,
    /// The filters injected, when any apply to the caller on this table.
    pub applied: Option<AppliedFilter>,
}

/// The first Jinja delimiter (`{{`, `{%`, `{#`) in `text`: Superset renders templates
/// after datagate's rewrite, so SQL holding one is refused. One pass for a `{` rather than
/// a search per delimiter: every statement is checked.
pub(crate) fn template_syntax(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'{', bytes).find_map(|at| match bytes.get(at + 1) {
        Some(b'{') => Some("{{"),
        Some(b'%') => Some("{%"),
        Some(b'#') => Some("{#"),
        _ => None,
    })
}

fn refuse_template_syntax(text: &str) -> Result<(), RlsError> {
    match template_syntax(text) {
        Some(syntax) => Err(RlsError::TemplateSyntax(syntax)),
        None => Ok(()),
    }
}

/// Parses `text` as exactly one expression of `rules`' dialect.
fn parse_expression(
    text: &str,
    rules: &DatasourceRules,
    limits: RewriteLimits,
) -> Result<Expr, RlsError> {
    if text.len() > limits.max_sql_bytes {
        return Err(RlsError::SqlTooLarge(limits.max_sql_bytes));
    }
    refuse_template_syntax(text)?;
    let dialect = rules.config.dialect.parser_dialect();
    let tokens = Tokenizer::new(dialect.as_ref(), text)
        .tokenize()
        .map_err(|error| RlsError::Parse(error.to_string()))?;
    for token in &tokens {
        match token {
            Token::Whitespace(Whitespace::SingleLineComment { .. })
            | Token::Whitespace(Whitespace::MultiLineComment(_)) => {
                return Err(RlsError::Comment);
            }
            Token::SemiColon => return Err(RlsError::Separator),
            _ => {}
        }
    }
    check_operator_count(&tokens)?;
    let mut parser = Parser::new(dialect.as_ref())
        .with_recursion_limit(limits.max_nesting_depth)
        .with_tokens(tokens);
    let expression = parser.parse_expr().map_err(|error| match error {
        ParserError::RecursionLimitExceeded => RlsError::TooDeeplyNested,
        other => RlsError::Parse(other.to_string()),
    })?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(RlsError::Parse(format!(
            "a SQL fragment is one expression; found `{}` after it",
            next.token
        )));
    }
    Ok(expression)
}

/// No query (so no relation) anywhere; no denied function.
struct FragmentChecker<'r> {
    rules: &'r CallerRules<'r>,
}

impl Visitor for FragmentChecker<'_> {
    type Break = RlsError;

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<RlsError> {
        ControlFlow::Break(RlsError::Subquery)
    }

    fn pre_visit_relation(&mut self, _relation: &ObjectName) -> ControlFlow<RlsError> {
        ControlFlow::Break(RlsError::Subquery)
    }

    fn pre_visit_expr(&mut self, expression: &Expr) -> ControlFlow<RlsError> {
        if let Expr::Function(function) = expression
            && let Some(name) = super::dialect::name_parts(&function.name)
                .and_then(|parts| parts.last().map(|ident| ident.value.to_lowercase()))
            && self.rules.is_denied_function(&name)
        {
            return ControlFlow::Break(RlsError::DeniedFunction(name));
        }
        ControlFlow::Continue(())
    }
}

fn check_expression(expression: &Expr, rules: &CallerRules<'_>) -> Result<(), RlsError> {
    match Visit::visit(expression, &mut FragmentChecker { rules }) {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Parses, checks and prints one fragment; the printed text is re-parsed and must read
/// back as the same expression.
fn checked(
    text: &str,
    rules: &CallerRules<'_>,
    limits: RewriteLimits,
) -> Result<(Expr, String), RlsError> {
    let expression = parse_expression(text, rules.rules, limits)?;
    check_expression(&expression, rules)?;
    let printed = expression.to_string();
    let reparsed = parse_expression(&printed, rules.rules, limits)
        .map_err(|_| RlsError::VerificationFailed("the printed fragment does not parse".into()))?;
    if reparsed != expression {
        return Err(RlsError::VerificationFailed(
            "the printed fragment reads back differently".into(),
        ));
    }
    Ok((expression, printed))
}

fn table_parts(table: &str) -> Vec<String> {
    TablePattern::parse(table).0
}

impl RlsPolicy {
    /// Whether any filter applies to `principal` on any of `uids` (every configured
    /// datasource when `None`).
    pub fn filters_apply(&self, uids: Option<&[String]>, principal: &Principal) -> bool {
        self.datasources
            .iter()
            .filter(|(uid, _)| uids.is_none_or(|uids| uids.contains(uid)))
            .any(|(_, rules)| {
                rules
                    .filters
                    .iter()
                    .any(|filter| filter.applies_to(principal))
            })
    }

    /// The dialect of datasource `uid`, when it is configured.
    pub fn dialect(&self, uid: &str) -> Option<super::Dialect> {
        self.datasources.get(uid).map(|rules| rules.config.dialect)
    }

    /// Checks one fragment for datasource `uid`; returns the text to forward (the parsed
    /// expression printed again).
    pub fn check_fragment(
        &self,
        uid: &str,
        text: &str,
        principal: &Principal,
        limits: RewriteLimits,
    ) -> Result<String, RlsError> {
        let rules = self
            .datasources
            .get(uid)
            .ok_or_else(|| RlsError::UnknownDatasource(uid.to_string()))?;
        let (applicable, bindings) = rules.for_caller(principal);
        let caller = CallerRules::new(rules, &applicable, &bindings);
        checked(text, &caller, limits).map(|(_, printed)| printed)
    }

    /// The `WHERE` for a query over `table` of datasource `uid`: the user's condition
    /// (checked like any fragment) ANDed with the caller's filters on that table.
    pub fn filtered_where(
        &self,
        uid: &str,
        table: &str,
        user_where: Option<&str>,
        principal: &Principal,
        limits: RewriteLimits,
    ) -> Result<FilteredWhere, RlsError> {
        let rules = self
            .datasources
            .get(uid)
            .ok_or_else(|| RlsError::UnknownDatasource(uid.to_string()))?;
        let (applicable, bindings) = rules.for_caller(principal);
        let caller = CallerRules::new(rules, &applicable, &bindings);
        let user = user_where
            .filter(|text| !text.trim().is_empty())
            .map(|text| checked(text, &caller, limits))
            .transpose()?;
        let parts = table_parts(table);
        let (predicate, filters) = match caller.predicate(&parts, LiteralMode::Print) {
            None => {
                return Ok(FilteredWhere {
                    sql: user.map(|(_, printed)| printed),
                    applied: None,
                });
            }
            Some(result) => result?,
        };
        let applied = AppliedFilter {
            table: parts.join("."),
            filters,
            predicate: predicate.to_string(),
        };
        let filter_node = Expr::Nested(Box::new(predicate));
        let combined = match &user {
            None => filter_node,
            Some((expression, _)) => Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(expression.clone()))),
                op: BinaryOperator::And,
                right: Box::new(filter_node),
            },
        };
        let printed = combined.to_string();
        // A bound value holding template syntax would be rendered by the upstream.
        refuse_template_syntax(&printed)?;
        let unlimited = RewriteLimits {
            max_sql_bytes: usize::MAX,
            max_nesting_depth: limits.max_nesting_depth.saturating_add(8),
            max_cpu: limits.max_cpu,
        };
        let reparsed = parse_expression(&printed, rules, unlimited).map_err(|_| {
            RlsError::VerificationFailed(format!("{table} (the filtered WHERE does not parse)"))
        })?;
        let filter_read_back = match (&user, &reparsed) {
            (None, Expr::Nested(filter)) => Some(filter.as_ref()),
            (
                Some((expression, _)),
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::And,
                    right,
                },
            ) => match (left.as_ref(), right.as_ref()) {
                (Expr::Nested(left), Expr::Nested(filter)) if left.as_ref() == expression => {
                    Some(filter.as_ref())
                }
                _ => None,
            },
            _ => None,
        };
        match filter_read_back {
            Some(filter) if caller.is_expected_predicate(&parts, filter) => Ok(FilteredWhere {
                sql: Some(printed),
                applied: Some(applied),
            }),
            _ => Err(RlsError::VerificationFailed(table.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Dialect;
    // The RLS tests' policy: one datasource, Gamma filtered to its own tenant's orders.
    use super::super::tests::policy;
    use super::*;
    use crate::principal::PrincipalKind;

    #[test]
    fn every_jinja_delimiter_is_found_wherever_it_is() {
        for (text, found) in [
            ("SELECT 1", None),
            ("SELECT '{'", None),
            ("SELECT '{ x }' , '}'", None),
            ("SELECT 1 {", None),
            ("{{ x }}", Some("{{")),
            ("SELECT 1 WHERE {% if x %}1{% endif %}", Some("{%")),
            ("SELECT 1 {# c #}", Some("{#")),
            ("SELECT '{' || '{%'", Some("{%")),
            ("SELECT '{ {{'", Some("{{")),
            ("SELECT 'é{#'", Some("{#")),
        ] {
            assert_eq!(template_syntax(text), found, "{text}");
        }
    }

    fn caller(name: &str, roles: &[&str]) -> Principal {
        let mut principal = Principal::anonymous(roles.iter().map(|r| r.to_string()).collect());
        principal.kind = PrincipalKind::User;
        principal.username = name.into();
        principal
    }

    fn check(dialect: Dialect, text: &str) -> Result<String, RlsError> {
        policy(dialect).check_fragment(
            "d",
            text,
            &caller("alice", &["Gamma"]),
            RewriteLimits::default(),
        )
    }

    #[test]
    fn plain_expressions_pass_printed_again() {
        for (text, printed) in [
            ("SUM(amount)", "SUM(amount)"),
            ("count(*)", "count(*)"),
            (
                "amount > 10 AND region = 'EU'",
                "amount > 10 AND region = 'EU'",
            ),
            (
                "CASE WHEN amount > 1 THEN 'big' ELSE 'small' END",
                "CASE WHEN amount > 1 THEN 'big' ELSE 'small' END",
            ),
            ("\"order date\"", "\"order date\""),
            ("  amount   *  2 ", "amount * 2"),
            ("region IN ('EU', 'US')", "region IN ('EU', 'US')"),
        ] {
            assert_eq!(
                check(Dialect::Sqlite, text).as_deref(),
                Ok(printed),
                "{text}"
            );
        }
    }

    /// The CVE-2025-48912 class: a fragment that reaches other rows or escapes its place.
    #[test]
    fn adversarial_fragments_are_refused() {
        for (text, kind) in [
            ("(SELECT SUM(amount) FROM orders)", "subquery_not_allowed"),
            ("amount + (SELECT 1)", "subquery_not_allowed"),
            ("EXISTS (SELECT 1 FROM orders)", "subquery_not_allowed"),
            (
                "region IN (SELECT region FROM orders)",
                "subquery_not_allowed",
            ),
            ("1 = 1 UNION SELECT tenant_id FROM orders", "parse_error"),
            ("(SELECT name FROM sqlite_master)", "subquery_not_allowed"),
            ("amount) OR (1 = 1", "parse_error"),
            ("1 = 1) --", "comment_not_allowed"),
            ("1 = 1 -- and the rest", "comment_not_allowed"),
            ("1 /* hidden */ = 1", "comment_not_allowed"),
            ("1 = 1; DROP TABLE orders", "multiple_statements"),
            ("'{{ current_username() }}' = 'x'", "template_syntax"),
            ("{% if 1 %}1{% endif %}", "template_syntax"),
            ("amount {# note #}", "template_syntax"),
            ("load_extension('x')", "denied_function"),
            ("pragma_table_info('orders')", "denied_function"),
            ("readfile('/etc/passwd')", "denied_function"),
            ("amount AS a", "parse_error"),
            ("amount, tenant_id", "parse_error"),
            ("amount FROM orders", "parse_error"),
            ("", "parse_error"),
        ] {
            assert_eq!(
                check(Dialect::Sqlite, text).map_err(|error| error.kind()),
                Err(kind),
                "{text}"
            );
        }
        for (text, kind) in [
            ("pg_sleep(10) IS NULL", "denied_function"),
            (
                "query_to_xml('select * from orders', true, true, '')",
                "denied_function",
            ),
            (
                "(SELECT relname FROM pg_catalog.pg_class LIMIT 1)",
                "subquery_not_allowed",
            ),
            (
                "ARRAY(SELECT tenant_id FROM orders)",
                "subquery_not_allowed",
            ),
            ("amount $$ x $$", "parse_error"),
        ] {
            assert_eq!(
                check(Dialect::Postgres, text).map_err(|error| error.kind()),
                Err(kind),
                "{text}"
            );
        }
        assert_eq!(
            check(Dialect::Mysql, "sleep(5) = 0").map_err(|error| error.kind()),
            Err("denied_function")
        );
        assert_eq!(
            check(Dialect::Mysql, "1 = 1 # comment").map_err(|error| error.kind()),
            Err("comment_not_allowed")
        );
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(
            check(Dialect::Sqlite, &deep).map_err(|error| error.kind()),
            Err("too_deeply_nested")
        );
        let long_chain = vec!["1"; 5000].join(" + ");
        assert_eq!(
            check(Dialect::Sqlite, &long_chain).map_err(|error| error.kind()),
            Err("too_deeply_nested")
        );
    }

    #[test]
    fn the_callers_filter_is_anded_to_the_user_where() {
        let policy = policy(Dialect::Sqlite);
        let limits = RewriteLimits::default();
        let alice = caller("alice", &["Gamma"]);
        let filtered = policy
            .filtered_where("d", "orders", Some("amount > 1 OR 1 = 1"), &alice, limits)
            .unwrap();
        assert_eq!(
            filtered.sql.as_deref(),
            Some("(amount > 1 OR 1 = 1) AND ((tenant_id = 'alice'))")
        );
        assert_eq!(filtered.applied.unwrap().filters, vec!["own".to_string()]);
        let alone = policy
            .filtered_where("d", "main.orders", None, &alice, limits)
            .unwrap();
        assert_eq!(alone.sql.as_deref(), Some("((tenant_id = 'alice'))"));
        // A table without filters keeps only the (checked) user condition.
        let other = policy
            .filtered_where("d", "customers", Some("x  =  1"), &alice, limits)
            .unwrap();
        assert_eq!(
            other,
            FilteredWhere {
                sql: Some("x = 1".into()),
                applied: None
            }
        );
        // A caller the filter does not apply to.
        let admin = caller("root", &["Admin"]);
        assert_eq!(
            policy
                .filtered_where("d", "orders", None, &admin, limits)
                .unwrap()
                .sql,
            None
        );
        assert!(policy.filters_apply(None, &alice));
        assert!(!policy.filters_apply(None, &admin));
        assert!(!policy.filters_apply(Some(&["other".to_string()]), &alice));
        // The user's WHERE is checked like any fragment.
        assert_eq!(
            policy
                .filtered_where("d", "orders", Some("1=1) OR (1=1"), &alice, limits)
                .map_err(|error| error.kind()),
            Err("parse_error")
        );
        // A username that would be rendered as a template by the upstream.
        let templated = caller("{{ 7 * 7 }}", &["Gamma"]);
        assert_eq!(
            policy
                .filtered_where("d", "orders", None, &templated, limits)
                .map_err(|error| error.kind()),
            Err("template_syntax")
        );
        // A quote in the username stays inside the literal.
        let quoted = caller("x' OR '1'='1", &["Gamma"]);
        assert_eq!(
            policy
                .filtered_where("d", "orders", None, &quoted, limits)
                .unwrap()
                .sql
                .as_deref(),
            Some("((tenant_id = 'x'' OR ''1''=''1'))")
        );
    }
}
