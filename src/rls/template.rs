//! Filter clauses with templates: parsed once when the policy loads, bound per request.
//!
//! `{{ current_username() }}` and friends are replaced by placeholder tokens before the
//! clause is parsed, so the clause's shape is fixed by the operator's text alone. Binding
//! replaces each placeholder in the parsed expression with a literal node — a value is
//! never spliced into SQL text — so `x' OR '1'='1` stays one string literal.

use std::borrow::Cow;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Ident, SetExpr, Statement, Value, VisitMut, VisitorMut};
use sqlparser::parser::Parser;

use super::{Dialect, RlsError};
use crate::principal::Principal;

const PLACEHOLDER_PREFIX: &str = "__datagate_template_";
const PLACEHOLDER_SUFFIX: &str = "__";

/// A value a clause can ask for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Template {
    Username,
    UserId,
    Email,
    /// A list: only valid as the whole item list of `IN (…)`.
    Roles,
    Claim(String),
}

impl Template {
    fn parse(text: &str) -> Option<Template> {
        let compact: String = text
            .chars()
            .filter(|character| !character.is_whitespace())
            .collect();
        match compact.as_str() {
            "current_username()" => Some(Template::Username),
            "current_user_id()" => Some(Template::UserId),
            "current_user_email()" => Some(Template::Email),
            "current_user_roles()" => Some(Template::Roles),
            _ => {
                let argument = compact.strip_prefix("claim(")?.strip_suffix(')')?;
                let name = argument
                    .strip_prefix('\'')
                    .and_then(|rest| rest.strip_suffix('\''))
                    .or_else(|| {
                        argument
                            .strip_prefix('"')
                            .and_then(|rest| rest.strip_suffix('"'))
                    })?;
                (!name.is_empty()).then(|| Template::Claim(name.to_string()))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Template::Username => "current_username()".into(),
            Template::UserId => "current_user_id()".into(),
            Template::Email => "current_user_email()".into(),
            Template::Roles => "current_user_roles()".into(),
            Template::Claim(name) => format!("claim('{name}')"),
        }
    }
}

/// A value bound for one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BoundValue {
    Text(String),
    Number(String),
    List(Vec<String>),
}

/// A [`BoundValue`] borrowed from where it comes from (the principal, or a cached
/// binding): the rewrite cache hashes and compares these, so a lookup copies nothing.
#[derive(Debug, PartialEq, Eq, Hash)]
pub enum BoundView<'v> {
    Text(Cow<'v, str>),
    Number(Cow<'v, str>),
    List(&'v [String]),
}

impl BoundValue {
    pub fn view(&self) -> BoundView<'_> {
        match self {
            BoundValue::Text(text) => BoundView::Text(Cow::Borrowed(text)),
            BoundValue::Number(text) => BoundView::Number(Cow::Borrowed(text)),
            BoundValue::List(items) => BoundView::List(items),
        }
    }
}

impl BoundView<'_> {
    fn into_owned(self) -> BoundValue {
        match self {
            BoundView::Text(text) => BoundValue::Text(text.into_owned()),
            BoundView::Number(text) => BoundValue::Number(text.into_owned()),
            BoundView::List(items) => BoundValue::List(items.to_vec()),
        }
    }
}

/// Why a template has no value for a caller.
#[derive(Debug, Clone, Copy)]
enum TemplateFailure {
    Missing,
    /// NUL ends a string in several databases' C APIs, and the generic dialect cannot
    /// know whether the backend treats a backslash as an escape.
    Unsafe,
}

impl TemplateFailure {
    fn error(self, filter: &str, template: &Template) -> RlsError {
        match self {
            TemplateFailure::Missing => RlsError::MissingTemplateValue {
                filter: filter.to_string(),
                template: template.describe(),
            },
            TemplateFailure::Unsafe => RlsError::InvalidTemplateValue {
                filter: filter.to_string(),
                template: template.describe(),
            },
        }
    }

    /// The [`RlsError::kind`] of [`Self::error`].
    fn kind(self) -> &'static str {
        match self {
            TemplateFailure::Missing => "missing_template_value",
            TemplateFailure::Unsafe => "invalid_template_value",
        }
    }
}

/// `template`'s value for `principal`, borrowed where the principal holds it as text.
fn view_of<'p>(
    template: &Template,
    principal: &'p Principal,
    dialect: Dialect,
) -> Result<BoundView<'p>, TemplateFailure> {
    let borrowed = |text: &'p Option<String>| {
        text.as_deref()
            .map(|text| BoundView::Text(Cow::Borrowed(text)))
            .ok_or(TemplateFailure::Missing)
    };
    let view = match template {
        Template::Username => BoundView::Text(Cow::Borrowed(&principal.username)),
        Template::UserId => borrowed(&principal.user_id)?,
        Template::Email => borrowed(&principal.email)?,
        Template::Roles => BoundView::List(&principal.roles),
        Template::Claim(name) => match principal.claims.get(name) {
            Some(serde_json::Value::String(text)) => BoundView::Text(Cow::Borrowed(text)),
            Some(serde_json::Value::Number(number)) => {
                BoundView::Number(Cow::Owned(number.to_string()))
            }
            Some(serde_json::Value::Bool(flag)) => BoundView::Text(Cow::Owned(flag.to_string())),
            _ => return Err(TemplateFailure::Missing),
        },
    };
    let unsafe_text =
        |text: &str| text.contains('\0') || (dialect == Dialect::Generic && text.contains('\\'));
    let any_unsafe = match &view {
        BoundView::Text(text) | BoundView::Number(text) => unsafe_text(text),
        BoundView::List(items) => items.iter().any(|item| unsafe_text(item)),
    };
    if any_unsafe {
        return Err(TemplateFailure::Unsafe);
    }
    Ok(view)
}

/// A clause ready to bind: its parsed expression and the templates it uses, by index.
#[derive(Debug, Clone)]
pub struct CompiledClause {
    expression: Expr,
    templates: Vec<Template>,
}

fn placeholder(index: usize) -> String {
    format!("{PLACEHOLDER_PREFIX}{index}{PLACEHOLDER_SUFFIX}")
}

fn placeholder_index(text: &str) -> Option<usize> {
    text.strip_prefix(PLACEHOLDER_PREFIX)?
        .strip_suffix(PLACEHOLDER_SUFFIX)?
        .parse()
        .ok()
}

impl CompiledClause {
    /// Parses `clause` as a boolean expression of `dialect`; `filter` names it in errors.
    pub fn compile(
        clause: &str,
        dialect: Dialect,
        filter: &str,
    ) -> Result<CompiledClause, RlsError> {
        let invalid =
            |message: String| RlsError::InvalidFilter(format!("filter `{filter}`: {message}"));
        if clause.contains(PLACEHOLDER_PREFIX) {
            return Err(invalid("the clause uses a reserved name".into()));
        }
        let mut text = String::with_capacity(clause.len());
        let mut templates = Vec::new();
        let mut rest = clause;
        while let Some(start) = rest.find("{{") {
            let Some(length) = rest[start..].find("}}") else {
                return Err(invalid("unclosed `{{`".into()));
            };
            let inner = &rest[start + 2..start + length];
            let template = Template::parse(inner)
                .ok_or_else(|| invalid(format!("unknown template `{{{{{inner}}}}}`")))?;
            text.push_str(&rest[..start]);
            text.push_str(&placeholder(templates.len()));
            templates.push(template);
            rest = &rest[start + length + 2..];
        }
        if rest.contains("}}") || rest.contains("{%") {
            return Err(invalid("stray template delimiter".into()));
        }
        text.push_str(rest);

        // Parsing it as the WHERE of a statement proves it is one complete expression.
        let wrapped = format!("SELECT 1 WHERE {text}");
        let parser_dialect = dialect.parser_dialect();
        let mut statements =
            Parser::parse_sql(parser_dialect.as_ref(), &wrapped).map_err(|error| {
                invalid(format!(
                    "does not parse as a {dialect:?} expression: {error}"
                ))
            })?;
        let expression = match statements.pop() {
            Some(Statement::Query(query)) if statements.is_empty() => match *query.body {
                SetExpr::Select(select) if select.from.is_empty() => select.selection,
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| invalid("must be a single boolean expression".into()))?;

        let compiled = CompiledClause {
            expression,
            templates,
        };
        compiled.check_placeholder_positions().map_err(invalid)?;
        Ok(compiled)
    }

    /// Every placeholder must sit where binding can replace it with a literal: a whole
    /// identifier, inside a single-quoted string (scalars), or as the item list of `IN`.
    fn check_placeholder_positions(&self) -> Result<(), String> {
        struct Finder<'c> {
            templates: &'c [Template],
            found: Vec<usize>,
            /// `IN (<roles>)` lists, and roles placeholders seen anywhere.
            lists_in_place: usize,
            lists_found: usize,
        }
        impl VisitorMut for Finder<'_> {
            type Break = String;
            fn pre_visit_expr(&mut self, expression: &mut Expr) -> ControlFlow<String> {
                match expression {
                    Expr::InList { list, .. } => {
                        if let [Expr::Identifier(ident)] = list.as_slice()
                            && let Some(index) = placeholder_index(&ident.value)
                            && self.templates.get(index) == Some(&Template::Roles)
                        {
                            self.lists_in_place += 1;
                        }
                    }
                    Expr::Identifier(ident) => {
                        if let Some(index) = placeholder_index(&ident.value) {
                            if ident.quote_style.is_some() {
                                return ControlFlow::Break(
                                    "a template cannot be a quoted identifier".into(),
                                );
                            }
                            if self.templates.get(index) == Some(&Template::Roles) {
                                self.lists_found += 1;
                            }
                            self.found.push(index);
                        }
                    }
                    Expr::Value(value) => {
                        if let Value::SingleQuotedString(text) = &value.value {
                            for (index, template) in self.templates.iter().enumerate() {
                                if text.contains(&placeholder(index)) {
                                    if *template == Template::Roles {
                                        return ControlFlow::Break("`current_user_roles()` is a list: use it as `IN ({{ current_user_roles() }})`".into());
                                    }
                                    self.found.push(index);
                                }
                            }
                        }
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            }
        }
        let mut finder = Finder {
            templates: &self.templates,
            found: Vec::new(),
            lists_in_place: 0,
            lists_found: 0,
        };
        let mut expression = self.expression.clone();
        if let ControlFlow::Break(message) = VisitMut::visit(&mut expression, &mut finder) {
            return Err(message);
        }
        // A placeholder anywhere else (a function name, a compound identifier, another
        // string kind) was not found above: refuse rather than leave it unbound.
        let printed = self.expression.to_string();
        let occurrences = printed.matches(PLACEHOLDER_PREFIX).count();
        if occurrences != finder.found.len() {
            return Err("a template is in a position that cannot take a value (use it as a whole value, inside '…', or as `IN (…)`)".into());
        }
        if finder.lists_found != finder.lists_in_place {
            return Err("`current_user_roles()` must be the whole list of `IN (…)`".into());
        }
        Ok(())
    }

    /// The values this clause needs for `principal`, in template order. A missing value
    /// refuses: it must never turn into an empty or always-true predicate.
    pub fn values_for(
        &self,
        principal: &Principal,
        filter: &str,
        dialect: Dialect,
    ) -> Result<Vec<BoundValue>, RlsError> {
        self.templates
            .iter()
            .map(|template| match view_of(template, principal, dialect) {
                Ok(view) => Ok(view.into_owned()),
                Err(failure) => Err(failure.error(filter, template)),
            })
            .collect()
    }

    /// [`Self::values_for`] borrowed from `principal` rather than copied, for the rewrite
    /// cache's lookup, which only hashes and compares them. `Err` carries the
    /// [`RlsError::kind`] `values_for` would fail with (the first failing template's).
    pub fn views_for<'p>(
        &'p self,
        principal: &'p Principal,
        dialect: Dialect,
    ) -> impl Iterator<Item = Result<BoundView<'p>, &'static str>> + 'p {
        self.templates.iter().map(move |template| {
            view_of(template, principal, dialect).map_err(TemplateFailure::kind)
        })
    }

    /// How many values the clause binds.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// The clause with every placeholder replaced by a literal node. `Print` literals are
    /// complete, escaped SQL literal tokens (the printer would otherwise "helpfully" skip
    /// escaping a quote that follows a backslash); `Compare` literals hold the plain value,
    /// to compare with what a re-parse of the printed SQL reads back.
    pub fn bind(&self, values: &[BoundValue], dialect: Dialect, mode: LiteralMode) -> Expr {
        struct Binder<'v> {
            values: &'v [BoundValue],
            dialect: Dialect,
            mode: LiteralMode,
        }
        impl Binder<'_> {
            fn text(&self, text: &str) -> Expr {
                match self.mode {
                    LiteralMode::Print => {
                        Expr::value(Value::Placeholder(self.dialect.quote_literal(text)))
                    }
                    LiteralMode::Compare => {
                        Expr::value(Value::SingleQuotedString(text.to_string()))
                    }
                }
            }
            fn literal(&self, value: &BoundValue) -> Expr {
                match value {
                    BoundValue::Number(number) => Expr::value(Value::Number(number.clone(), false)),
                    BoundValue::Text(text) => self.text(text),
                    // Not reachable for checked clauses: lists bind only inside `IN`.
                    BoundValue::List(_) => Expr::value(Value::Boolean(false)),
                }
            }
        }
        impl VisitorMut for Binder<'_> {
            type Break = ();
            fn post_visit_expr(&mut self, expression: &mut Expr) -> ControlFlow<()> {
                match expression {
                    Expr::InList { list, negated, .. } => {
                        let list_value = match list.as_slice() {
                            [Expr::Identifier(ident)] => placeholder_index(&ident.value)
                                .and_then(|index| self.values.get(index))
                                .and_then(|value| match value {
                                    BoundValue::List(items) => Some(items.clone()),
                                    _ => None,
                                }),
                            _ => None,
                        };
                        if let Some(items) = list_value {
                            if items.is_empty() {
                                // `x IN ()` is not SQL; its meaning is "false".
                                *expression = Expr::value(Value::Boolean(*negated));
                            } else {
                                *list = items.iter().map(|item| self.text(item)).collect();
                            }
                        }
                    }
                    Expr::Identifier(Ident { value, .. }) => {
                        // Lists are bound by their `IN`, visited after this child.
                        if let Some(bound) =
                            placeholder_index(value).and_then(|index| self.values.get(index))
                            && !matches!(bound, BoundValue::List(_))
                        {
                            *expression = self.literal(bound);
                        }
                    }
                    Expr::Value(value) => {
                        if let Value::SingleQuotedString(text) = &value.value
                            && text.contains(PLACEHOLDER_PREFIX)
                        {
                            let mut bound_text = text.clone();
                            for (index, bound) in self.values.iter().enumerate() {
                                if let BoundValue::Text(replacement)
                                | BoundValue::Number(replacement) = bound
                                {
                                    bound_text =
                                        bound_text.replace(&placeholder(index), replacement);
                                }
                            }
                            *expression = self.text(&bound_text);
                        }
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            }
        }
        let mut expression = self.expression.clone();
        let _ = VisitMut::visit(
            &mut expression,
            &mut Binder {
                values,
                dialect,
                mode,
            },
        );
        expression
    }
}

/// How bound literals are represented; see [`CompiledClause::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralMode {
    Print,
    Compare,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        let mut principal = Principal::anonymous(vec!["Gamma".into(), "EU".into()]);
        principal.kind = crate::principal::PrincipalKind::User;
        principal.username = "x' OR '1'='1".into();
        std::sync::Arc::make_mut(&mut principal.claims)
            .insert("tenant".into(), serde_json::json!(42));
        principal
    }

    fn bound(clause: &str, dialect: Dialect) -> String {
        let compiled = CompiledClause::compile(clause, dialect, "f").unwrap();
        let values = compiled.values_for(&alice(), "f", dialect).unwrap();
        compiled
            .bind(&values, dialect, LiteralMode::Print)
            .to_string()
    }

    #[test]
    fn values_become_single_literals() {
        assert_eq!(
            bound("tenant_id = '{{ current_username() }}'", Dialect::Postgres),
            "tenant_id = 'x'' OR ''1''=''1'"
        );
        assert_eq!(
            bound("tenant_id = {{current_username()}}", Dialect::Sqlite),
            "tenant_id = 'x'' OR ''1''=''1'"
        );
        assert_eq!(
            bound("note LIKE '%{{ current_username() }}%'", Dialect::Generic),
            "note LIKE '%x'' OR ''1''=''1%'"
        );
        assert_eq!(
            bound("t = {{ claim('tenant') }}", Dialect::Postgres),
            "t = 42"
        );
        assert_eq!(
            bound("role IN ({{ current_user_roles() }})", Dialect::Postgres),
            "role IN ('Gamma', 'EU')"
        );
    }

    #[test]
    fn mysql_backslashes_are_escaped() {
        let mut principal = alice();
        principal.username = "\\' OR 1=1 --".into();
        let compiled =
            CompiledClause::compile("u = '{{ current_username() }}'", Dialect::Mysql, "f").unwrap();
        let values = compiled
            .values_for(&principal, "f", Dialect::Mysql)
            .unwrap();
        assert_eq!(
            compiled
                .bind(&values, Dialect::Mysql, LiteralMode::Print)
                .to_string(),
            "u = '\\\\'' OR 1=1 --'"
        );
    }

    #[test]
    fn missing_values_and_bad_clauses_are_refused() {
        let compiled = CompiledClause::compile(
            "email = '{{ current_user_email() }}'",
            Dialect::Postgres,
            "f",
        )
        .unwrap();
        assert!(matches!(
            compiled.values_for(&alice(), "f", Dialect::Postgres),
            Err(RlsError::MissingTemplateValue { .. })
        ));
        let compiled =
            CompiledClause::compile("x = {{ claim('nope') }}", Dialect::Postgres, "f").unwrap();
        assert!(
            compiled
                .values_for(&alice(), "f", Dialect::Postgres)
                .is_err()
        );
        for bad in [
            "tenant_id = '{{ whoami() }}'",
            "a = 1; DROP TABLE x",
            "a = ",
            "{{ current_user_roles() }} = 'x'",
            "a = '{{ current_user_roles() }}'",
            "\"{{ current_username() }}\" = 1",
            "a = {{ current_username()",
        ] {
            assert!(
                CompiledClause::compile(bad, Dialect::Postgres, "f").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn nul_bytes_are_refused() {
        let mut principal = alice();
        principal.username = "a\0b".into();
        let compiled =
            CompiledClause::compile("u = '{{ current_username() }}'", Dialect::Sqlite, "f")
                .unwrap();
        assert!(matches!(
            compiled.values_for(&principal, "f", Dialect::Sqlite),
            Err(RlsError::InvalidTemplateValue { .. })
        ));
    }

    #[test]
    fn an_empty_role_list_matches_nothing() {
        let mut principal = alice();
        principal.roles.clear();
        let compiled = CompiledClause::compile(
            "role IN ({{ current_user_roles() }})",
            Dialect::Postgres,
            "f",
        )
        .unwrap();
        let values = compiled
            .values_for(&principal, "f", Dialect::Postgres)
            .unwrap();
        assert_eq!(
            compiled
                .bind(&values, Dialect::Postgres, LiteralMode::Print)
                .to_string(),
            "false"
        );
    }
}
