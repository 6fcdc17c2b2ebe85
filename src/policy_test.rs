//! `datagate test`: policy test suites, as `opa test` is for OPA. It sits beside the
//! request path, not on it: each case states a caller and a request, and
//! [`crate::decision::admit`] — the proxy's own decision function — decides it against
//! the configured policy, with no upstream. The caller is stated
//! ([`crate::decision::AssertedCaller`]) instead of proven, then enriched like an
//! authenticated one (fixture store identities, policy memberships); a case may also
//! present a real token or API key in its headers, which goes through verification.
//!
//! ```text
//! test file (YAML) → config (+ the file's overrides) → AppState (+ fixture store)
//!   each case: headers read as the proxy reads them → admit(trace)
//!              → compare: decision, status, route, reason, kind, permission, export,
//!                RLS filters, rewritten SQL, rows on a fixture SQLite database
//! ```
//!
//! Test files live in `<policy.directory>/tests/*.yaml` unless paths are given. A file
//! or case that cannot be read is an error naming the file and the case; it fails the
//! run like a failing case.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::decision::{self, AssertedCaller, Decision, RequestHead, Verdict};
use crate::export::ExportKind;
use crate::http_error::HttpError;
use crate::principal::{BasicRole, Principal, PrincipalKind};
use crate::state::AppState;
use crate::store::{GrantRow, StoreContents};

/// Why a test run could not start (a failing or malformed case is a result, not this).
#[derive(Debug, thiserror::Error)]
pub enum PolicyTestError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no test files (`*.yaml`) in `{0}`")]
    NoTests(String),
    #[error("cannot write the JUnit report `{path}`: {source}")]
    Junit {
        path: String,
        source: std::io::Error,
    },
    #[error("test runtime: {0}")]
    Runtime(std::io::Error),
}

// ---------------------------------------------------------------------------------------
// The file format.

/// One test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Top-level config keys this file replaces (e.g. `routes: {packs: [superset]}`).
    #[serde(default)]
    config: Option<serde_yaml::Mapping>,
    /// Grants-store contents for this file's cases, as the store would hold them.
    #[serde(default)]
    store: Option<FixtureStore>,
    /// Fixture databases by datasource uid, for `rows`.
    #[serde(default)]
    databases: BTreeMap<String, FixtureDatabase>,
    /// Read one by one, so a malformed case names itself and the others still run.
    cases: Vec<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureStore {
    #[serde(default)]
    users: Vec<FixtureUser>,
    #[serde(default)]
    grants: Vec<FixtureGrant>,
    #[serde(default)]
    role_permissions: Vec<FixtureRolePermission>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureUser {
    login: String,
    #[serde(default)]
    service_account: bool,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    basic_role: Option<BasicRole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureGrant {
    datasource: String,
    /// `user:<login>`, `serviceaccount:<login>`, `team:<name>` or `basic:<Viewer|Editor|Admin>`.
    to: String,
    /// `Query`, `Edit`, `Admin` or one action.
    permission: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureRolePermission {
    role: String,
    view: String,
    permission: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureDatabase {
    /// A SQLite file (relative to the test file), opened read-only.
    #[serde(default)]
    sqlite: Option<PathBuf>,
    /// SQL run on a fresh in-memory SQLite database.
    #[serde(default)]
    sqlite_script: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    /// `anonymous`, or a stated caller; omitted: whatever the request's headers present.
    #[serde(default)]
    caller: Option<serde_yaml::Value>,
    request: RequestSpec,
    expect: Expectation,
}

/// A caller stated by the test.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatedCaller {
    #[serde(default, alias = "sub")]
    login: Option<String>,
    #[serde(default)]
    service_account: bool,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    basic_role: Option<BasicRole>,
    /// Further claims, for `{{ claim('name') }}` in RLS clauses.
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
    /// Raw claims, mapped by `auth.jwt.claims` exactly as a verified token's.
    #[serde(default)]
    token_claims: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default = "default_method")]
    method: String,
    /// The path, optionally with `?query`.
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A string is sent as is; any other value as JSON.
    #[serde(default)]
    body: Option<serde_yaml::Value>,
}

fn default_method() -> String {
    "GET".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DecisionName {
    Forward,
    Refuse,
    Answer,
}

impl DecisionName {
    fn as_str(self) -> &'static str {
        match self {
            DecisionName::Forward => "forward",
            DecisionName::Refuse => "refuse",
            DecisionName::Answer => "answer",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    decision: DecisionName,
    /// datagate's own status (refusals and answers; a forwarded request's is the upstream's).
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    route: Option<String>,
    /// A substring of the refusal message.
    #[serde(default)]
    reason: Option<String>,
    /// The refusal's stable `kind` (`parse_error`, `unlisted_table`, …).
    #[serde(default)]
    kind: Option<String>,
    /// The permission that decided: the one missing on a refusal, one that granted on a
    /// forward (`can_read on Chart`, `datasources:query on demo`).
    #[serde(default)]
    permission: Option<String>,
    /// `none`, or `{kind: data|image|clipboard, allowed: bool}`.
    #[serde(default)]
    export: Option<serde_yaml::Value>,
    /// Filters applied per table (`{orders: [own_orders]}`); `{}`: none applied.
    #[serde(default)]
    filters: Option<BTreeMap<String, Vec<String>>>,
    /// The SQL the upstream receives: a string for one statement, a list for several.
    #[serde(default)]
    sql: Option<OneOrMany>,
    /// Rows the rewritten SQL returns on the statement's fixture database, in order.
    #[serde(default)]
    rows: Option<Vec<Vec<serde_yaml::Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ExportExpectation {
    None,
    Decided { kind: ExportKind, allowed: bool },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportDecided {
    kind: ExportKind,
    allowed: bool,
}

// ---------------------------------------------------------------------------------------
// Results.

/// How one case went.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseOutcome {
    Pass,
    /// Each line: `what: expected …, got …`.
    Fail(Vec<String>),
    /// The case (or its file) could not be read or run.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub outcome: CaseOutcome,
}

#[derive(Debug, Clone)]
pub struct FileReport {
    /// The path as given or found.
    pub path: String,
    pub cases: Vec<CaseResult>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<FileReport>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.count(|outcome| matches!(outcome, CaseOutcome::Pass))
    }

    /// Failing cases and errors.
    pub fn failed(&self) -> usize {
        self.count(|outcome| !matches!(outcome, CaseOutcome::Pass))
    }

    pub fn errors(&self) -> usize {
        self.count(|outcome| matches!(outcome, CaseOutcome::Error(_)))
    }

    fn count(&self, predicate: impl Fn(&CaseOutcome) -> bool) -> usize {
        self.files
            .iter()
            .flat_map(|file| &file.cases)
            .filter(|case| predicate(&case.outcome))
            .count()
    }

    /// One line per case (diff lines indented under failures) and the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for file in &self.files {
            for case in &file.cases {
                let (label, details) = match &case.outcome {
                    CaseOutcome::Pass => ("PASS ", Vec::new()),
                    CaseOutcome::Fail(lines) => ("FAIL ", lines.clone()),
                    CaseOutcome::Error(message) => ("ERROR", vec![message.clone()]),
                };
                out.push_str(&format!("{label} {} › {}\n", file.path, case.name));
                for detail in details {
                    for line in detail.lines() {
                        out.push_str(&format!("      {line}\n"));
                    }
                }
            }
        }
        let errors = self.errors();
        out.push_str(&format!(
            "summary: {} passed, {} failed\n",
            self.passed(),
            self.failed()
        ));
        if errors > 0 {
            out.push_str(&format!(
                "({errors} of the failures are test files or cases that could not be read)\n"
            ));
        }
        out
    }

    /// JUnit XML: one `<testsuite>` per file, `<failure>` with the diff, `<error>` for
    /// unreadable cases.
    pub fn junit(&self) -> Result<Vec<u8>, std::io::Error> {
        use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
        let mut writer = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let total = self.passed() + self.failed();
        let mut suites = BytesStart::new("testsuites");
        suites.push_attribute(("name", "datagate test"));
        suites.push_attribute(("tests", total.to_string().as_str()));
        suites.push_attribute((
            "failures",
            (self.failed() - self.errors()).to_string().as_str(),
        ));
        suites.push_attribute(("errors", self.errors().to_string().as_str()));
        writer.write_event(Event::Start(suites))?;
        for file in &self.files {
            let failures = file
                .cases
                .iter()
                .filter(|case| matches!(case.outcome, CaseOutcome::Fail(_)))
                .count();
            let errors = file
                .cases
                .iter()
                .filter(|case| matches!(case.outcome, CaseOutcome::Error(_)))
                .count();
            let path = xml_text(&file.path);
            let mut suite = BytesStart::new("testsuite");
            suite.push_attribute(("name", path.as_str()));
            suite.push_attribute(("tests", file.cases.len().to_string().as_str()));
            suite.push_attribute(("failures", failures.to_string().as_str()));
            suite.push_attribute(("errors", errors.to_string().as_str()));
            writer.write_event(Event::Start(suite))?;
            for case in &file.cases {
                let name = xml_text(&case.name);
                let mut element = BytesStart::new("testcase");
                element.push_attribute(("name", name.as_str()));
                element.push_attribute(("classname", path.as_str()));
                let (tag, message, body) = match &case.outcome {
                    CaseOutcome::Pass => {
                        writer.write_event(Event::Empty(element))?;
                        continue;
                    }
                    CaseOutcome::Fail(lines) => (
                        "failure",
                        lines.first().cloned().unwrap_or_default(),
                        lines.join("\n"),
                    ),
                    CaseOutcome::Error(text) => ("error", text.clone(), text.clone()),
                };
                writer.write_event(Event::Start(element))?;
                let message = xml_text(message.lines().next().unwrap_or_default());
                let mut detail = BytesStart::new(tag);
                detail.push_attribute(("message", message.as_str()));
                writer.write_event(Event::Start(detail))?;
                writer.write_event(Event::Text(BytesText::new(&xml_text(&body))))?;
                writer.write_event(Event::End(BytesEnd::new(tag)))?;
                writer.write_event(Event::End(BytesEnd::new("testcase")))?;
            }
            writer.write_event(Event::End(BytesEnd::new("testsuite")))?;
        }
        writer.write_event(Event::End(BytesEnd::new("testsuites")))?;
        let mut bytes = writer.into_inner();
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// XML 1.0 cannot hold most control characters, even escaped; they become U+FFFD.
/// (quick-xml escapes `<`, `&`, quotes.)
fn xml_text(text: &str) -> String {
    text.chars()
        .map(|character| match character {
            '\t' | '\n' | '\r' => character,
            character if (character as u32) < 0x20 => '\u{FFFD}',
            '\u{FFFE}' | '\u{FFFF}' => '\u{FFFD}',
            character => character,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running.

/// Runs every test file under `paths` (files, or directories of `*.yaml`), or under
/// `<policy.directory>/tests` when none are given, against the config at `config_path`.
pub fn run(config_path: &Path, paths: &[PathBuf]) -> Result<Report, PolicyTestError> {
    let config_text =
        std::fs::read_to_string(config_path).map_err(|source| PolicyTestError::Read {
            path: config_path.display().to_string(),
            source,
        })?;
    let base = BaseConfig {
        path: config_path.to_path_buf(),
        text: config_text,
    };
    let files = if paths.is_empty() {
        let config = Config::load(config_path).map_err(|error| PolicyTestError::Read {
            path: config_path.display().to_string(),
            source: std::io::Error::other(error.to_string()),
        })?;
        test_files(&config.policy_directory().join("tests"))?
    } else {
        let mut files = Vec::new();
        for path in paths {
            if path.is_dir() {
                files.extend(test_files(path)?);
            } else {
                files.push(path.clone());
            }
        }
        files
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PolicyTestError::Runtime)?;
    let mut report = Report::default();
    for file in files {
        report.files.push(runtime.block_on(run_file(&base, &file)));
    }
    Ok(report)
}

fn test_files(directory: &Path) -> Result<Vec<PathBuf>, PolicyTestError> {
    let read_error = |source| PolicyTestError::Read {
        path: directory.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with('.')
            && (name.ends_with(".yaml") || name.ends_with(".yml"))
            && path.is_file()
        {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyTestError::NoTests(directory.display().to_string()));
    }
    Ok(files)
}

struct BaseConfig {
    path: PathBuf,
    text: String,
}

impl BaseConfig {
    /// The config with the test file's top-level keys replaced. Audit lines go to stderr
    /// (nothing is audited here, but a configured audit file must not be created).
    fn with_overrides(&self, overrides: Option<&serde_yaml::Mapping>) -> Result<Config, String> {
        let origin = self.path.display().to_string();
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(&self.text).map_err(|error| format!("`{origin}`: {error}"))?;
        if let (Some(overrides), serde_yaml::Value::Mapping(config)) = (overrides, &mut value) {
            for (key, replacement) in overrides {
                config.insert(key.clone(), replacement.clone());
            }
        }
        let text = serde_yaml::to_string(&value).map_err(|error| format!("`{origin}`: {error}"))?;
        let parent = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let base_dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        let origin = match overrides {
            Some(_) => format!("{origin} (with the test file's `config:` overrides)"),
            None => origin,
        };
        let mut config =
            Config::from_yaml(&text, &origin, base_dir).map_err(|error| error.to_string())?;
        config.audit.output = Some("stderr".to_string());
        Ok(config)
    }
}

/// A file that cannot be used at all is one error result naming it.
fn file_error(path: &str, message: String) -> FileReport {
    FileReport {
        path: path.to_string(),
        cases: vec![CaseResult {
            name: "(file)".to_string(),
            outcome: CaseOutcome::Error(message),
        }],
    }
}

/// A path as the operator knows it: relative to the working directory when inside it.
fn display_path(path: &Path) -> String {
    let relative = std::env::current_dir()
        .and_then(|cwd| Ok((cwd.canonicalize()?, path.canonicalize()?)))
        .ok()
        .and_then(|(cwd, full)| full.strip_prefix(&cwd).ok().map(Path::to_path_buf));
    relative
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

async fn run_file(base: &BaseConfig, path: &Path) -> FileReport {
    let shown = display_path(path);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return file_error(&shown, format!("cannot read `{shown}`: {error}")),
    };
    let file: TestFile = match serde_yaml::from_str(&text) {
        Ok(file) => file,
        Err(error) => return file_error(&shown, format!("`{shown}`: {error}")),
    };
    let config = match base.with_overrides(file.config.as_ref()) {
        Ok(config) => config,
        Err(error) => return file_error(&shown, format!("`{shown}`: config: {error}")),
    };
    let contents = match file.store.as_ref().map(store_contents).transpose() {
        Ok(contents) => contents.unwrap_or_default(),
        Err(error) => return file_error(&shown, format!("`{shown}`: store: {error}")),
    };
    let state = match AppState::build_with_contents(config, contents) {
        Ok(state) => state,
        Err(error) => return file_error(&shown, format!("`{shown}`: {error}")),
    };
    let directory = path.parent().unwrap_or(Path::new("."));
    let mut databases = BTreeMap::new();
    for (uid, fixture) in &file.databases {
        match open_database(directory, fixture) {
            Ok(connection) => {
                databases.insert(uid.clone(), connection);
            }
            Err(error) => {
                return file_error(&shown, format!("`{shown}`: databases.{uid}: {error}"));
            }
        }
    }
    if file.cases.is_empty() {
        return file_error(&shown, format!("`{shown}`: `cases` is empty"));
    }
    let mut cases = Vec::with_capacity(file.cases.len());
    for (index, raw) in file.cases.iter().enumerate() {
        let label = raw
            .get("name")
            .and_then(serde_yaml::Value::as_str)
            .map_or_else(|| format!("case {}", index + 1), str::to_string);
        let at = |error: String| format!("`{shown}` case {} (`{label}`): {error}", index + 1);
        let (name, outcome) = match serde_yaml::from_value::<TestCase>(raw.clone()) {
            Ok(case) => {
                let outcome = run_case(&state, &case, &databases)
                    .await
                    .unwrap_or_else(|error| CaseOutcome::Error(at(error)));
                (case.name, outcome)
            }
            Err(error) => (label.clone(), CaseOutcome::Error(at(error.to_string()))),
        };
        cases.push(CaseResult { name, outcome });
    }
    FileReport { path: shown, cases }
}

/// The fixture store as the store would hand it to a snapshot: ids in order of
/// appearance, teams from the users' memberships and the grants.
fn store_contents(fixture: &FixtureStore) -> Result<StoreContents, String> {
    let mut contents = StoreContents::default();
    let team_id = |contents: &mut StoreContents, name: &str| -> i64 {
        if let Some((id, _)) = contents.teams().find(|(_, team)| *team == name) {
            return id;
        }
        let id = contents.teams().count() as i64 + 1;
        contents.insert_team(id, name.to_string());
        id
    };
    for (index, user) in fixture.users.iter().enumerate() {
        let id = index as i64 + 1;
        if contents.users().any(|known| known.login == user.login) {
            return Err(format!("user `{}` is listed twice", user.login));
        }
        contents.insert_user(crate::store::StoreUser {
            id,
            login: user.login.clone(),
            is_service_account: user.service_account,
            basic_role: user.basic_role,
            roles: user.roles.clone(),
        });
        for team in &user.teams {
            let team = team_id(&mut contents, team);
            contents.add_member(team, id);
        }
    }
    for (index, grant) in fixture.grants.iter().enumerate() {
        let (kind, grantee) = match grant.to.split_once(':') {
            Some(("user", login)) | Some(("serviceaccount", login)) => {
                let service_account = grant.to.starts_with("serviceaccount:");
                let user = contents
                    .users()
                    .find(|user| user.login == login && user.is_service_account == service_account)
                    .ok_or_else(|| {
                        format!(
                            "grants[{index}]: `{}` is not one of the store's users",
                            grant.to
                        )
                    })?;
                ("user", user.id.to_string())
            }
            Some(("team", name)) => ("team", team_id(&mut contents, name).to_string()),
            Some(("basic", role)) => {
                let role: BasicRole = role
                    .parse()
                    .map_err(|error| format!("grants[{index}]: {error}"))?;
                ("builtin", role.as_str().to_string())
            }
            _ => {
                return Err(format!(
                    "grants[{index}]: `to: {}` must be user:<login>, serviceaccount:<login>, team:<name> or basic:<role>",
                    grant.to
                ));
            }
        };
        contents.insert_grant(GrantRow {
            id: index as i64 + 1,
            datasource_uid: grant.datasource.clone(),
            grantee_kind: kind.to_string(),
            grantee,
            permission: grant.permission.clone(),
        });
    }
    for permission in &fixture.role_permissions {
        contents.add_role_permission(
            permission.role.clone(),
            permission.permission.clone(),
            permission.view.clone(),
        );
    }
    contents.revision = 1;
    Ok(contents)
}

fn open_database(
    directory: &Path,
    fixture: &FixtureDatabase,
) -> Result<rusqlite::Connection, String> {
    match (&fixture.sqlite, &fixture.sqlite_script) {
        (Some(file), None) => {
            let path = directory.join(file);
            rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|error| format!("`{}`: {error}", path.display()))
        }
        (None, Some(script)) => {
            let connection =
                rusqlite::Connection::open_in_memory().map_err(|error| error.to_string())?;
            connection
                .execute_batch(script)
                .map_err(|error| format!("sqlite_script: {error}"))?;
            Ok(connection)
        }
        _ => Err("give exactly one of `sqlite` (a file) and `sqlite_script`".to_string()),
    }
}

/// The caller a case states.
enum CallerChoice {
    /// Whatever the headers present (nothing: anonymous).
    Headers,
    /// `caller: anonymous`: no credential at all.
    Anonymous,
    Asserted(AssertedCaller),
}

fn caller_choice(case: &TestCase) -> Result<CallerChoice, String> {
    let Some(value) = &case.caller else {
        return Ok(CallerChoice::Headers);
    };
    if let serde_yaml::Value::String(text) = value {
        return match text.as_str() {
            "anonymous" => Ok(CallerChoice::Anonymous),
            other => Err(format!(
                "caller: `{other}` is neither `anonymous` nor a caller (`{{login: …, roles: […]}}`)"
            )),
        };
    }
    let stated: StatedCaller =
        serde_yaml::from_value(value.clone()).map_err(|error| format!("caller: {error}"))?;
    if let Some(claims) = stated.token_claims {
        if stated.login.is_some()
            || stated.user_id.is_some()
            || stated.email.is_some()
            || !stated.roles.is_empty()
            || !stated.teams.is_empty()
            || stated.basic_role.is_some()
            || !stated.claims.is_empty()
            || stated.service_account
        {
            return Err(
                "caller: `token_claims` states the whole token; give no other caller fields"
                    .to_string(),
            );
        }
        return Ok(CallerChoice::Asserted(AssertedCaller::Claims(claims)));
    }
    let login = stated
        .login
        .filter(|login| !login.is_empty())
        .ok_or("caller: `login` (or `sub`) is required, or give `token_claims`")?;
    if stated
        .roles
        .iter()
        .chain(&stated.teams)
        .any(String::is_empty)
    {
        return Err("caller: role and team names may not be empty".to_string());
    }
    Ok(CallerChoice::Asserted(AssertedCaller::Principal(
        Principal {
            kind: if stated.service_account {
                PrincipalKind::ServiceAccount
            } else {
                PrincipalKind::User
            },
            username: login,
            user_id: stated.user_id,
            email: stated.email,
            roles: stated.roles,
            teams: stated.teams,
            basic_role: stated.basic_role,
            claims: std::sync::Arc::new(stated.claims),
        },
    )))
}

fn export_expectation(value: &serde_yaml::Value) -> Result<ExportExpectation, String> {
    if value.as_str() == Some("none") {
        return Ok(ExportExpectation::None);
    }
    let decided: ExportDecided = serde_yaml::from_value(value.clone())
        .map_err(|error| format!("expect.export: `none` or {{kind, allowed}}: {error}"))?;
    Ok(ExportExpectation::Decided {
        kind: decided.kind,
        allowed: decided.allowed,
    })
}

/// What the decision was, in the terms of an expectation.
struct Actual {
    decision: DecisionName,
    status: Option<u16>,
    route: String,
    reason: String,
    kind: Option<&'static str>,
    /// Refusal: the permission found missing; forward: every permission that granted.
    permissions: Vec<String>,
    export: ExportExpectation,
    decided: Option<Decision>,
}

/// Runs one case: the headers read as the proxy reads them ([`decision::read_headers`]),
/// [`decision::admit`] traced, then the comparison.
async fn run_case(
    state: &Arc<AppState>,
    case: &TestCase,
    databases: &BTreeMap<String, rusqlite::Connection>,
) -> Result<CaseOutcome, String> {
    let caller = caller_choice(case)?;
    let expect = &case.expect;
    if expect.status.is_some() && expect.decision == DecisionName::Forward {
        return Err("expect.status: a forwarded request's status is the upstream's; give `status` for `refuse` and `answer` only".to_string());
    }
    let export = expect.export.as_ref().map(export_expectation).transpose()?;
    let request = &case.request;
    let body = match &request.body {
        None => None,
        Some(serde_yaml::Value::String(text)) => Some(text.clone().into_bytes()),
        Some(value) => {
            Some(serde_json::to_vec(value).map_err(|error| format!("request.body: {error}"))?)
        }
    };
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| format!("request.headers: `{name}`: {error}"))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|error| format!("request.headers.{name}: {error}"))?;
        headers.append(name, value);
    }
    if body.is_some() && !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    let method = http::Method::from_bytes(request.method.as_bytes())
        .map_err(|error| format!("request.method: {error}"))?;
    let authenticator = &state.authenticator;
    let presents_credential = [
        http::header::AUTHORIZATION.as_str(),
        authenticator.api_key_header(),
    ]
    .into_iter()
    .chain(authenticator.token_sources().header_names())
    .any(|name| headers.contains_key(name));
    if presents_credential && !matches!(caller, CallerChoice::Headers) {
        return Err("the request presents a credential header and the case states a caller: give one of them".to_string());
    }
    let (raw_path, query) = match request.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path.as_str(), None),
    };
    // The headers are read as the proxy reads them (credential-header checks, token
    // sources, Upgrade); a stated caller then takes the place of the credential.
    let mut presented = decision::read_headers(state, method.as_str(), &headers);
    if let CallerChoice::Asserted(asserted) = caller {
        presented = presented.stating(asserted);
    }
    let head = RequestHead {
        method: method.as_str(),
        raw_path,
        query,
        headers: &presented,
        client_address: None,
    };
    let snapshot = state.snapshot();
    let mut given = decision::GivenBody(body.as_deref());
    let options = decision::AdmitOptions {
        trace: true,
        ..Default::default()
    };
    let decided = decision::admit(state, &snapshot, &head, &mut given, options).await;
    let actual = actual_of(decided);
    Ok(compare(expect, export.as_ref(), &actual, databases))
}

fn refused(
    refusal: &decision::Refusal,
    mcp: Option<&decision::McpCall>,
    route: String,
    checks: &[decision::CheckOutcome],
) -> Actual {
    let mut error = HttpError::from(refusal);
    let kind = error.kind;
    if let Some(call) = mcp
        && let Some(json_rpc) = error.as_json_rpc(&call.id)
    {
        error = json_rpc;
    }
    let missing = match refusal {
        decision::Refusal::MissingPermission { permission } => Some(permission.clone()),
        decision::Refusal::MissingDatasourcePermission { action, uid } => {
            Some(format!("{action} on {uid}"))
        }
        _ => checks
            .iter()
            .rev()
            .find(|check| !check.passed)
            .and_then(|check| check.permission.clone()),
    };
    Actual {
        decision: DecisionName::Refuse,
        status: Some(error.status),
        route,
        reason: refusal.to_string(),
        kind,
        permissions: missing.into_iter().collect(),
        export: export_of(checks),
        decided: None,
    }
}

fn export_of(checks: &[decision::CheckOutcome]) -> ExportExpectation {
    checks
        .iter()
        .find_map(|check| {
            check.export.map(|kind| ExportExpectation::Decided {
                kind,
                allowed: check.passed,
            })
        })
        .unwrap_or(ExportExpectation::None)
}

fn actual_of(decided: Decision) -> Actual {
    let mut actual = match &decided.verdict {
        Verdict::Refuse(refusal) => refused(
            refusal,
            decided.mcp.as_ref(),
            decided.route.name().to_string(),
            &decided.checks,
        ),
        Verdict::Forward(_) => Actual {
            decision: DecisionName::Forward,
            status: None,
            route: decided.route.name().to_string(),
            reason: "forwarded".to_string(),
            kind: None,
            permissions: decided
                .checks
                .iter()
                .filter(|check| check.passed)
                .filter_map(|check| check.permission.clone())
                .collect(),
            export: export_of(&decided.checks),
            decided: None,
        },
        Verdict::Answer(_) => Actual {
            decision: DecisionName::Answer,
            status: Some(200),
            route: decided.route.name().to_string(),
            reason: "answered by datagate".to_string(),
            kind: None,
            permissions: Vec::new(),
            export: ExportExpectation::None,
            decided: None,
        },
    };
    actual.decided = Some(decided);
    actual
}

fn show_export(export: &ExportExpectation) -> String {
    match export {
        ExportExpectation::None => "none".to_string(),
        ExportExpectation::Decided { kind, allowed } => {
            format!("{{kind: {}, allowed: {allowed}}}", kind.as_str())
        }
    }
}

fn compare(
    expect: &Expectation,
    export: Option<&ExportExpectation>,
    actual: &Actual,
    databases: &BTreeMap<String, rusqlite::Connection>,
) -> CaseOutcome {
    let mut diff = Vec::new();
    if expect.decision != actual.decision {
        diff.push(format!(
            "decision: expected {}, got {} ({})",
            expect.decision.as_str(),
            actual.decision.as_str(),
            actual.reason
        ));
    }
    if let Some(status) = expect.status
        && Some(status) != actual.status
    {
        diff.push(format!(
            "status: expected {status}, got {}",
            actual
                .status
                .map_or_else(|| "none (forwarded)".to_string(), |got| got.to_string())
        ));
    }
    if let Some(route) = &expect.route
        && route != &actual.route
    {
        diff.push(format!("route: expected `{route}`, got `{}`", actual.route));
    }
    if let Some(reason) = &expect.reason
        && !actual.reason.contains(reason.as_str())
    {
        diff.push(format!(
            "reason: expected a message containing `{reason}`, got `{}`",
            actual.reason
        ));
    }
    if let Some(kind) = &expect.kind
        && Some(kind.as_str()) != actual.kind
    {
        diff.push(format!(
            "kind: expected `{kind}`, got {}",
            actual
                .kind
                .map_or_else(|| "none".to_string(), |got| format!("`{got}`"))
        ));
    }
    if let Some(permission) = &expect.permission
        && !actual.permissions.iter().any(|got| got == permission)
    {
        let got = if actual.permissions.is_empty() {
            "none".to_string()
        } else {
            actual
                .permissions
                .iter()
                .map(|got| format!("`{got}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let what = match actual.decision {
            DecisionName::Refuse => "missing",
            _ => "granting",
        };
        diff.push(format!(
            "permission: expected `{permission}`, got {got} ({what})"
        ));
    }
    if let Some(export) = export
        && export != &actual.export
    {
        diff.push(format!(
            "export: expected {}, got {}",
            show_export(export),
            show_export(&actual.export)
        ));
    }
    let statements = actual
        .decided
        .as_ref()
        .map(|decided| decided.statements.as_slice())
        .unwrap_or_default();
    if let Some(filters) = &expect.filters {
        let expected: BTreeMap<String, BTreeSet<String>> = filters
            .iter()
            .map(|(table, names)| (table.to_lowercase(), names.iter().cloned().collect()))
            .collect();
        let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for statement in statements {
            for applied in statement.rewritten.applied.iter() {
                got.entry(applied.table.clone())
                    .or_default()
                    .extend(applied.filters.iter().cloned());
            }
        }
        if expected != got {
            diff.push(format!(
                "filters: expected {}, got {}",
                show_filters(&expected),
                show_filters(&got)
            ));
        }
    }
    if let Some(sql) = &expect.sql {
        let expected: Vec<&str> = match sql {
            OneOrMany::One(one) => vec![one.trim()],
            OneOrMany::Many(many) => many.iter().map(|sql| sql.trim()).collect(),
        };
        let got: Vec<&str> = statements
            .iter()
            .map(|statement| statement.rewritten.sql.trim())
            .collect();
        if expected != got {
            diff.push(format!(
                "sql: expected\n  {}\ngot\n  {}",
                show_statements(&expected),
                show_statements(&got)
            ));
        }
    }
    if let Some(rows) = &expect.rows {
        match rows_of(statements, databases) {
            Ok(got) => {
                let expected: Vec<Vec<Value>> = rows
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|cell| serde_json::to_value(cell).unwrap_or(Value::Null))
                            .collect()
                    })
                    .collect();
                if expected != got {
                    diff.push(format!(
                        "rows: expected {}, got {}",
                        Value::from(expected.into_iter().map(Value::from).collect::<Vec<_>>()),
                        Value::from(got.into_iter().map(Value::from).collect::<Vec<_>>())
                    ));
                }
            }
            Err(problem) => diff.push(format!("rows: {problem}")),
        }
    }
    if diff.is_empty() {
        CaseOutcome::Pass
    } else {
        CaseOutcome::Fail(diff)
    }
}

fn show_filters(filters: &BTreeMap<String, BTreeSet<String>>) -> String {
    if filters.is_empty() {
        return "none".to_string();
    }
    filters
        .iter()
        .map(|(table, names)| {
            format!(
                "{table}: [{}]",
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn show_statements(statements: &[&str]) -> String {
    if statements.is_empty() {
        return "(no SQL)".to_string();
    }
    statements.join("\n  ")
}

/// The rows the one rewritten statement returns on its datasource's fixture database.
fn rows_of(
    statements: &[decision::StatementRewrite],
    databases: &BTreeMap<String, rusqlite::Connection>,
) -> Result<Vec<Vec<Value>>, String> {
    let [statement] = statements else {
        return Err(format!(
            "`rows` needs exactly one SQL statement; the request carried {}",
            statements.len()
        ));
    };
    let connection = databases.get(&statement.datasource).ok_or_else(|| {
        format!(
            "no fixture database for datasource `{}` (add it under `databases:`)",
            statement.datasource
        )
    })?;
    let mut prepared = connection
        .prepare(&statement.rewritten.sql)
        .map_err(|error| format!("the rewritten SQL failed on the fixture database: {error}"))?;
    let columns = prepared.column_count();
    let mut rows = prepared
        .query([])
        .map_err(|error| format!("the rewritten SQL failed on the fixture database: {error}"))?;
    let mut result = Vec::new();
    while let Some(row) = rows
        .next()
        .map_err(|error| format!("the rewritten SQL failed on the fixture database: {error}"))?
    {
        let mut values = Vec::with_capacity(columns);
        for index in 0..columns {
            use rusqlite::types::ValueRef;
            let value = match row.get_ref(index).map_err(|error| error.to_string())? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(number) => Value::from(number),
                ValueRef::Real(number) => Value::from(number),
                ValueRef::Text(text) => Value::from(String::from_utf8_lossy(text).into_owned()),
                ValueRef::Blob(blob) => Value::from(hex::encode(blob)),
            };
            values.push(value);
        }
        result.push(values);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let report = Report {
            files: vec![FileReport {
                path: "a<b>.yaml".into(),
                cases: vec![
                    CaseResult {
                        name: "ok & \"quoted\"".into(),
                        outcome: CaseOutcome::Pass,
                    },
                    CaseResult {
                        name: "bad\u{1}".into(),
                        outcome: CaseOutcome::Fail(vec!["status: expected 403, got 200 <".into()]),
                    },
                    CaseResult {
                        name: "broken".into(),
                        outcome: CaseOutcome::Error("unknown field `expet`".into()),
                    },
                ],
            }],
        };
        let xml = String::from_utf8(report.junit().unwrap()).unwrap();
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("a&lt;b&gt;.yaml"), "{xml}");
        assert!(xml.contains("ok &amp; &quot;quoted&quot;"), "{xml}");
        assert!(!xml.contains('\u{1}'), "{xml}");
        assert_eq!(report.passed(), 1);
        assert_eq!(report.failed(), 2);
        assert!(report.render().contains("summary: 1 passed, 2 failed"));
    }

    #[test]
    fn fixture_store_refuses_unknown_grantees() {
        let store = FixtureStore {
            grants: vec![FixtureGrant {
                datasource: "demo".into(),
                to: "user:nobody".into(),
                permission: "Query".into(),
            }],
            ..FixtureStore::default()
        };
        assert!(store_contents(&store).unwrap_err().contains("user:nobody"));
    }
}
