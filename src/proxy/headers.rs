//! Request headers on their way to the upstream: what a client may send, and what the
//! upstream receives.
//!
//! Sits at both ends of the proxy's request flow:
//! - [`check_client_headers`] runs first, in `decision::read_headers` (so the proxy,
//!   `explain` and `datagate test` share it), before identification: credential headers
//!   that could be read two ways (sent twice, not text, spelt with `_`) and `Connection`
//!   nominations of headers datagate decides on are refused. `Upgrade` is refused by
//!   `decision::admit` once the route is known, unless the route allows it.
//! - [`HeaderPlan::prepare_upstream_headers`] runs in `upstream_request_filter`, inside
//!   [`edit_upstream_headers`] (one plain header map, not pingora's two): every client
//!   header whose name is protected (identity, credentials, routing/trust, anything datagate
//!   sets) is removed — names are compared after lowercasing and mapping `_` to `-`, because
//!   CGI/WSGI servers (and Datasette) read `X_Datagate_User` and `X-Datagate-User` as the
//!   same variable — and then datagate's own identity, credential and forwarding headers
//!   are written.
//!
//! pingora itself (0.9, default upstream request policy) removes hop-by-hop headers and the
//! headers a `Connection` header nominates before `upstream_request_filter` runs.

use std::collections::HashSet;
use std::net::IpAddr;

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

use crate::config::{Config, ForwardedForMode, ForwardingConfig, IdentityPreset};
use crate::principal::{Principal, PrincipalKind};

/// Why a client's request headers are refused before anything else is decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the `{header}` header is sent more than once; send one credential")]
    DuplicateCredential { header: String },
    #[error("the `{header}` header is not plain text (visible ASCII)")]
    CredentialNotText { header: String },
    #[error(
        "header `{sent}` is read as `{header}` by some servers; spell it `{header}` or leave it out"
    )]
    AmbiguousCredentialName { sent: String, header: String },
    #[error("the `Connection` header may not nominate `{header}`")]
    ConnectionNominatesProtected { header: String },
    #[error("the `Connection` header is malformed")]
    MalformedConnection,
    #[error("route `{route}` does not allow protocol upgrades (`Upgrade` header)")]
    UpgradeNotAllowed { route: String },
}

impl HeaderError {
    /// The stable `kind` of the refusal body.
    pub fn kind(&self) -> &'static str {
        match self {
            HeaderError::DuplicateCredential { .. } => "duplicate_credentials",
            HeaderError::CredentialNotText { .. } => "credential_not_text",
            HeaderError::AmbiguousCredentialName { .. } => "ambiguous_header_name",
            HeaderError::ConnectionNominatesProtected { .. } => "connection_nominates_protected",
            HeaderError::MalformedConnection => "malformed_connection_header",
            HeaderError::UpgradeNotAllowed { .. } => "upgrade_not_allowed",
        }
    }
}

/// A header name as CGI/WSGI servers compare them: lowercase, `_` read as `-`.
pub fn normalized_name(name: &str) -> String {
    folded(name).into_owned()
}

/// [`normalized_name`] without an allocation for the usual, already-normal name (pingora
/// hands header names over lowercased).
fn folded(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().all(|byte| fold_name_byte(byte) == byte) {
        std::borrow::Cow::Borrowed(name)
    } else {
        // Only ASCII bytes change, so the result is still UTF-8.
        std::borrow::Cow::Owned(
            name.chars()
                .map(|character| match character {
                    '_' => '-',
                    other => other.to_ascii_lowercase(),
                })
                .collect(),
        )
    }
}

/// One byte of a header name as [`normalized_name`] folds it.
fn fold_name_byte(byte: u8) -> u8 {
    if byte == b'_' {
        b'-'
    } else {
        byte.to_ascii_lowercase()
    }
}

/// Whether two header names are one name to a server that folds case and reads `_` as
/// `-` ([`normalized_name`]), compared without folding either into a copy.
fn same_folded_name(first: &str, second: &str) -> bool {
    first.len() == second.len()
        && first
            .bytes()
            .zip(second.bytes())
            .all(|(first, second)| fold_name_byte(first) == fold_name_byte(second))
}

/// Header names echoed in refusals are the client's own, bounded so a refusal stays small.
fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Headers datagate decides on; a client may not have a proxy remove them on the way.
const DECIDED_ON: [&str; 6] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "authorization",
    "cookie",
];

/// pingora fails a request with ten or more `Connection` tokens with its own error; refuse
/// long lists here, with a clear answer, before anything else happens.
const MAX_CONNECTION_TOKENS: usize = 8;

/// Refuses request headers that datagate and the upstream could read differently:
/// - each of `credential_headers` (e.g. `Authorization`, the API-key header) at most once,
///   as plain text (a non-text value used to count as "absent", i.e. anonymous, and was
///   still forwarded), and never under another spelling that a CGI server would merge
///   with it (`X_Api_Key` for `X-Api-Key`);
/// - a `Connection` header nominating a header datagate decides on, a protected routing
///   header or a credential (pingora would strip it after datagate read it).
pub fn check_client_headers(
    headers: &http::HeaderMap,
    credential_headers: &[&str],
) -> std::result::Result<(), HeaderError> {
    // One pass over the headers, nothing copied (this runs on every request).
    // `HeaderMap::iter` yields a repeated header once per value, so a name seen a second
    // time is a repeat.
    let mut previous: Option<&http::HeaderName> = None;
    for (name, value) in headers.iter() {
        let repeated = previous == Some(name);
        previous = Some(name);
        for credential in credential_headers {
            if !same_folded_name(name.as_str(), credential) {
                continue;
            }
            // Header names arrive lowercased: only the credential's own spelling (any
            // case) is the credential; `_` for `-` is another header to the upstream.
            if !name.as_str().eq_ignore_ascii_case(credential) {
                return Err(HeaderError::AmbiguousCredentialName {
                    sent: shown(name.as_str()),
                    header: credential.to_string(),
                });
            }
            if repeated {
                return Err(HeaderError::DuplicateCredential {
                    header: credential.to_string(),
                });
            }
            if value.to_str().is_err() {
                return Err(HeaderError::CredentialNotText {
                    header: credential.to_string(),
                });
            }
        }
    }
    let mut tokens = 0usize;
    for value in headers.get_all(http::header::CONNECTION) {
        let text = value
            .to_str()
            .map_err(|_| HeaderError::MalformedConnection)?;
        for token in text
            .split(',')
            .map(str::trim)
            .filter(|token| !token.is_empty())
        {
            tokens += 1;
            if tokens > MAX_CONNECTION_TOKENS
                || http::HeaderName::from_bytes(token.as_bytes()).is_err()
            {
                return Err(HeaderError::MalformedConnection);
            }
            let nominated = normalized_name(token);
            let protected = DECIDED_ON.contains(&nominated.as_str())
                || nominated.starts_with("x-forwarded-")
                || nominated == "forwarded"
                || nominated.starts_with("x-datagate-")
                || credential_headers
                    .iter()
                    .any(|credential| same_folded_name(credential, &nominated));
            if protected {
                return Err(HeaderError::ConnectionNominatesProtected {
                    header: shown(token),
                });
            }
        }
    }
    Ok(())
}

/// An upstream answering `101 Switching Protocols` to a request that asked for no upgrade
/// is refused (502) rather than relayed: the client must never be told it holds a tunnel
/// datagate did not agree to.
pub fn check_upstream_switch(
    request: &RequestHeader,
    response: &pingora::http::ResponseHeader,
) -> Result<()> {
    if response.status == http::StatusCode::SWITCHING_PROTOCOLS
        && !request.headers.contains_key(http::header::UPGRADE)
    {
        return Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "the upstream switched protocols on a request that asked for no upgrade",
        ));
    }
    Ok(())
}

pub fn content_length(request: &RequestHeader) -> Option<usize> {
    request
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse().ok())
}

/// Identity values come from tokens and may hold any character; header values may not, and
/// upstreams split lists on `,` and trim what they split. Control characters, `%`, `,`,
/// `"` and `\` (HTTP list quoting), non-ASCII bytes, and spaces at either end are
/// percent-encoded, so `alice@example.com` passes unchanged, nothing can inject a header,
/// and `" Admin"` never reads as `Admin`.
pub fn encode_identity_value(value: &str) -> String {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b'%')
        .add(b',')
        .add(b'"')
        .add(b'\\');
    let inner = value.trim_matches(' ');
    if inner.is_empty() {
        return "%20".repeat(value.len());
    }
    let leading = value.len() - value.trim_start_matches(' ').len();
    let trailing = value.len() - value.trim_end_matches(' ').len();
    let mut encoded = "%20".repeat(leading);
    encoded.extend(percent_encoding::utf8_percent_encode(inner, ENCODED));
    encoded.push_str(&"%20".repeat(trailing));
    encoded
}

fn internal(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

/// The identity header names one preset writes; `None` means the header is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaderNames {
    pub user: Option<String>,
    pub roles: Option<String>,
    pub teams: Option<String>,
    pub basic_role: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Anonymous callers get identity headers (user `anonymous`, their roles): `custom`
    /// and `superset`; with `grafana` and `datasette` they get none, so the upstream sees
    /// an unauthenticated request rather than a user called `anonymous`.
    pub for_anonymous: bool,
    /// Sent as the basic role when the caller has none (Grafana's `None` role), so a role
    /// an upstream remembers from an earlier request is not kept.
    pub no_basic_role: Option<&'static str>,
}

fn named(name: &str) -> Option<String> {
    Some(name.to_string())
}

impl IdentityHeaderNames {
    pub fn for_preset(preset: IdentityPreset) -> IdentityHeaderNames {
        match preset {
            IdentityPreset::Custom => IdentityHeaderNames {
                user: named("X-Datagate-User"),
                roles: named("X-Datagate-Roles"),
                teams: named("X-Datagate-Teams"),
                basic_role: named("X-Datagate-Org-Role"),
                email: None,
                name: None,
                for_anonymous: true,
                no_basic_role: None,
            },
            IdentityPreset::Grafana => IdentityHeaderNames {
                user: named("X-WEBAUTH-USER"),
                roles: None,
                teams: named("X-WEBAUTH-GROUPS"),
                basic_role: named("X-WEBAUTH-ROLE"),
                email: named("X-WEBAUTH-EMAIL"),
                name: named("X-WEBAUTH-NAME"),
                for_anonymous: false,
                no_basic_role: Some("None"),
            },
            IdentityPreset::Superset => IdentityHeaderNames {
                user: named("X-Datagate-User"),
                roles: named("X-Datagate-Roles"),
                teams: None,
                basic_role: None,
                email: named("X-Datagate-Email"),
                name: named("X-Datagate-Name"),
                // datagate_security.py maps the `anonymous` user to Superset's anonymous
                // user (AUTH_ROLE_PUBLIC) and refuses requests without the header.
                for_anonymous: true,
                no_basic_role: None,
            },
            IdentityPreset::Datasette => IdentityHeaderNames {
                user: named("X-Datagate-User"),
                roles: named("X-Datagate-Roles"),
                teams: named("X-Datagate-Teams"),
                basic_role: named("X-Datagate-Org-Role"),
                email: named("X-Datagate-Email"),
                name: named("X-Datagate-Name"),
                for_anonymous: false,
                no_basic_role: None,
            },
        }
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        [
            &self.user,
            &self.roles,
            &self.teams,
            &self.basic_role,
            &self.email,
            &self.name,
        ]
        .into_iter()
        .flatten()
    }
}

/// The config keys naming identity headers, in the order of [`IdentityHeaderNames`].
const IDENTITY_KEYS: [&str; 6] = ["user", "roles", "teams", "basic_role", "email", "name"];

/// Every header rule of the configuration, resolved once at start-up.
#[derive(Debug, Clone)]
pub struct HeaderPlan {
    identity: IdentityHeaderNames,
    /// `identity`'s names as pingora takes them; cloning one is a reference count, where
    /// a `String` would be copied for every header of every request.
    identity_wire: IdentityWireNames,
    /// `forwarding.x_forwarded_proto` as a header value, built once.
    forwarded_proto: HeaderValue,
    /// `identity.no_basic_role` as a header value, built once.
    no_basic_role: Option<HeaderValue>,
    /// Normalized names ([`normalized_name`]) no client copy of which reaches the upstream.
    protected: HashSet<String, foldhash::fast::RandomState>,
    /// Normalized prefixes likewise (`x-datagate-`, and `Name-*` entries of the lists).
    protected_prefixes: Vec<String>,
    forwarding: ForwardingConfig,
    /// `forwarding.trusted_proxies`, parsed.
    trusted_proxies: Vec<ipnet::IpNet>,
    db_headers: crate::creds::DbCredentialHeaders,
}

impl HeaderPlan {
    /// Checks the header settings of `config`; the error names the key that is wrong.
    pub fn validate(config: &Config) -> std::result::Result<(), (String, String)> {
        let headers = &config.identity_headers;
        let explicit = [
            &headers.user,
            &headers.roles,
            &headers.teams,
            &headers.basic_role,
            &headers.email,
            &headers.name,
        ];
        for (key, name) in IDENTITY_KEYS.iter().zip(explicit) {
            let Some(name) = name else { continue };
            let key = format!("identity_headers.{key}");
            if headers.preset != IdentityPreset::Custom {
                return Err((
                    key,
                    "the preset names every identity header; use `preset: custom` to name them yourself"
                        .to_string(),
                ));
            }
            valid_header_name(&key, name)?;
        }
        for (index, name) in headers.strip.iter().enumerate() {
            valid_list_entry(&format!("identity_headers.strip[{index}]"), name)?;
        }
        let forwarding = &config.forwarding;
        for (index, name) in forwarding.strip.iter().enumerate() {
            valid_list_entry(&format!("forwarding.strip[{index}]"), name)?;
        }
        if forwarding.x_forwarded_for == ForwardedForMode::Append
            && forwarding.trusted_proxies.is_empty()
        {
            return Err((
                "forwarding.trusted_proxies".to_string(),
                "required with `x_forwarded_for: append` (the peers whose list is kept)"
                    .to_string(),
            ));
        }
        for (index, entry) in forwarding.trusted_proxies.iter().enumerate() {
            if parse_network(entry).is_none() {
                return Err((
                    format!("forwarding.trusted_proxies[{index}]"),
                    format!("`{entry}` is not an IP address or CIDR range"),
                ));
            }
        }
        if forwarding.x_forwarded_for == ForwardedForMode::Replace
            && !forwarding.trusted_proxies.is_empty()
        {
            return Err((
                "forwarding.trusted_proxies".to_string(),
                "only used with `x_forwarded_for: append`".to_string(),
            ));
        }
        Ok(())
    }

    /// Resolves the plan; call [`HeaderPlan::validate`] first (config validation does).
    pub fn new(config: &Config) -> HeaderPlan {
        let settings = &config.identity_headers;
        let mut identity = IdentityHeaderNames::for_preset(settings.preset);
        if settings.preset == IdentityPreset::Custom {
            let slots = [
                (&mut identity.user, &settings.user),
                (&mut identity.roles, &settings.roles),
                (&mut identity.teams, &settings.teams),
                (&mut identity.basic_role, &settings.basic_role),
                (&mut identity.email, &settings.email),
                (&mut identity.name, &settings.name),
            ];
            for (slot, explicit) in slots {
                if let Some(name) = explicit {
                    *slot = Some(name.clone());
                }
            }
        }
        let mut protected = HashSet::default();
        let mut protected_prefixes = vec!["x-datagate-".to_string(), "x-webauth-".to_string()];
        let presets = [
            IdentityPreset::Custom,
            IdentityPreset::Grafana,
            IdentityPreset::Superset,
            IdentityPreset::Datasette,
        ];
        // Every preset's names, whichever is in use: a client header meant for another
        // upstream's trust scheme has no business reaching this one either.
        let preset_names: Vec<String> = presets
            .iter()
            .flat_map(|preset| {
                IdentityHeaderNames::for_preset(*preset)
                    .all()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        let db = &config.aws.headers;
        let always = [
            "remote-user",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ];
        let lists = settings.strip.iter().chain(config.forwarding.strip.iter());
        for name in identity
            .all()
            .chain(preset_names.iter())
            .chain([&db.db_user, &db.db_token, &db.db_endpoint])
            .map(String::as_str)
            .chain(always)
            .chain(lists.clone().map(String::as_str))
        {
            match name.strip_suffix('*') {
                Some(prefix) => protected_prefixes.push(normalized_name(prefix)),
                None => {
                    protected.insert(normalized_name(name));
                }
            }
        }
        HeaderPlan {
            identity_wire: IdentityWireNames::of(&identity),
            no_basic_role: identity.no_basic_role.map(HeaderValue::from_static),
            forwarded_proto: HeaderValue::from_static(config.forwarding.x_forwarded_proto.as_str()),
            identity,
            protected,
            protected_prefixes,
            forwarding: config.forwarding.clone(),
            trusted_proxies: config
                .forwarding
                .trusted_proxies
                .iter()
                .filter_map(|entry| parse_network(entry))
                .collect(),
            db_headers: config.aws.headers.clone(),
        }
    }

    pub fn identity_names(&self) -> &IdentityHeaderNames {
        &self.identity
    }

    /// Whether a client header of this name is removed before forwarding.
    pub fn is_protected(&self, name: &str) -> bool {
        let name = folded(name);
        self.protected.contains(name.as_ref())
            || self
                .protected_prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
    }

    /// Removes every client header whose name is protected.
    pub fn strip_client_headers(&self, headers: &mut http::HeaderMap) {
        // A request usually carries one or two (its credential): kept inline.
        let doomed: smallvec::SmallVec<[http::HeaderName; 4]> = headers
            .keys()
            .filter(|name| self.is_protected(name.as_str()))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }

    /// Everything the upstream request's headers need: client copies of protected headers
    /// removed, then datagate's identity, database-credential and forwarding headers set.
    pub fn prepare_upstream_request(
        &self,
        request: &mut RequestHeader,
        principal: &Principal,
        db_credentials: Option<&crate::creds::DbCredentials>,
        peer: Option<IpAddr>,
    ) -> Result<()> {
        let identity = IdentityHeaderValues::of(principal);
        edit_upstream_headers(request, |headers| {
            self.prepare_upstream_headers(headers, &identity, db_credentials, peer)
        })
    }

    /// [`Self::prepare_upstream_request`] over the request's header map, with the caller's
    /// identity values already encoded (the proxy's remembered callers keep theirs,
    /// [`IdentityHeaderValues`]); the proxy runs it inside [`edit_upstream_headers`].
    pub fn prepare_upstream_headers(
        &self,
        headers: &mut http::HeaderMap,
        identity: &IdentityHeaderValues,
        db_credentials: Option<&crate::creds::DbCredentials>,
        peer: Option<IpAddr>,
    ) -> Result<()> {
        // Read before the client's copies are stripped, and only when they are used.
        let client_forwarded_for: Vec<String> =
            if self.forwarding.x_forwarded_for == ForwardedForMode::Append {
                headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|value| value.to_str().ok().map(str::to_owned))
                    .collect()
            } else {
                Vec::new()
            };
        let host = if self.forwarding.x_forwarded_host {
            headers
                .get(http::header::HOST)
                .filter(|value| value.to_str().is_ok())
                .cloned()
        } else {
            None
        };
        // The database-credential names are protected: stripping removed every client copy.
        self.strip_client_headers(headers);
        self.write_identity(headers, identity)?;
        write_db_credential_headers(headers, &self.db_headers, db_credentials)?;
        let forwarded_for = forwarded_for(
            self.forwarding.x_forwarded_for,
            &self.trusted_proxies,
            &client_forwarded_for,
            peer,
        );
        if let Some(forwarded_for) = forwarded_for {
            let value =
                HeaderValue::try_from(forwarded_for).map_err(|_| internal("x-forwarded-for"))?;
            headers.insert(X_FORWARDED_FOR, value);
        }
        headers.insert(X_FORWARDED_PROTO, self.forwarded_proto.clone());
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        Ok(())
    }

    fn write_identity(
        &self,
        headers: &mut http::HeaderMap,
        identity: &IdentityHeaderValues,
    ) -> Result<()> {
        let names = &self.identity_wire;
        if identity.anonymous && !self.identity.for_anonymous {
            return Ok(());
        }
        let basic_role = identity.basic_role.as_ref().or(self.no_basic_role.as_ref());
        let values = [
            (&names.user, Some(identity.user.as_ref())),
            (&names.roles, Some(identity.roles.as_ref())),
            (&names.teams, Some(identity.teams.as_ref())),
            (&names.basic_role, basic_role.map(Ok)),
            (
                &names.email,
                identity.email.as_ref().map(|email| email.as_ref()),
            ),
            (
                &names.name,
                identity.name.as_ref().map(|name| name.as_ref()),
            ),
        ];
        for (name, value) in values {
            if let (Some(name), Some(value)) = (name, value) {
                let name = name
                    .as_ref()
                    .map_err(|_| internal("identity header name"))?;
                let value = value.map_err(|_| internal("identity header"))?;
                headers.insert(name.clone(), value.clone());
            }
        }
        Ok(())
    }
}

/// Runs `edit` over the upstream request's headers as one plain [`http::HeaderMap`], then
/// puts the request back together.
///
/// pingora's own `insert_header` and `remove_header` keep a second, case-preserving map in
/// step and parse the name again on every call; on the auth route that was the largest
/// single part of what datagate added to a forwarded request (7.6k of ~36k instructions,
/// callgrind). Edited here, the request goes upstream without that map: field names are
/// written lowercase (the well-known ones in pingora's title case, `Host`,
/// `Content-Length`), which every HTTP/1.1 parser reads exactly as before — field names
/// are case-insensitive (RFC 9110 §5.1) — and which is what HTTP/2 sends anyway. Values,
/// their order and repeated fields are kept as they are.
pub fn edit_upstream_headers<T>(
    request: &mut RequestHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> Result<T>,
) -> Result<T> {
    let send_end_stream = request.send_end_stream();
    // The target is rebuilt from the URI; one the URI does not reproduce (absolute-form)
    // is kept verbatim and restored (the proxy has already set an origin-form one).
    let verbatim_target = (!target_is_uri(request)).then(|| request.raw_path().to_vec());
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(request, placeholder).into();
    // Room for what datagate adds (identity, forwarding, a content length): the map
    // grows once here instead of once or twice while the headers go in.
    parts.headers.reserve(ADDED_HEADERS);
    let edited = edit(&mut parts.headers);
    let mut rebuilt = RequestHeader::from(parts);
    if let Some(send_end_stream) = send_end_stream {
        rebuilt.set_send_end_stream(send_end_stream);
    }
    if let Some(target) = verbatim_target {
        rebuilt.set_raw_path(&target)?;
    }
    *request = rebuilt;
    edited
}

/// Whether the request's target goes on the wire as its URI says (origin-form); an
/// absolute-form target is kept apart, verbatim, and the URI holds only its path.
fn target_is_uri(request: &RequestHeader) -> bool {
    request
        .uri
        .path_and_query()
        .is_some_and(|target| target.as_str().as_bytes() == request.raw_path())
}

/// The headers datagate usually adds to a forwarded request: six identity headers,
/// `X-Forwarded-For`, `X-Forwarded-Proto`.
const ADDED_HEADERS: usize = 8;

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// [`IdentityHeaderNames`] parsed once into header names (a name config validation let
/// through always parses; if one did not, the request is refused, not sent without it).
#[derive(Debug, Clone)]
struct IdentityWireNames {
    user: Option<WireName>,
    roles: Option<WireName>,
    teams: Option<WireName>,
    basic_role: Option<WireName>,
    email: Option<WireName>,
    name: Option<WireName>,
}

/// `Err`: the configured name did not parse.
type WireName = std::result::Result<http::HeaderName, ()>;

impl IdentityWireNames {
    fn of(names: &IdentityHeaderNames) -> IdentityWireNames {
        let wire = |name: &Option<String>| {
            name.as_ref()
                .map(|name| http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| ()))
        };
        IdentityWireNames {
            user: wire(&names.user),
            roles: wire(&names.roles),
            teams: wire(&names.teams),
            basic_role: wire(&names.basic_role),
            email: wire(&names.email),
            name: wire(&names.name),
        }
    }
}

/// An identity header value, or why it cannot be one (never expected: the encoding
/// escapes every byte a header value may not hold, and the request is refused if it did).
type EncodedValue = std::result::Result<HeaderValue, http::header::InvalidHeaderValue>;

/// What the upstream is told about one caller, encoded ([`encode_identity_value`]) into
/// header values once: a remembered caller ([`crate::decision::callers::Caller`]) keeps
/// them, so a request clones reference counts instead of encoding, joining and copying
/// every value again. Which of them are sent is the [`HeaderPlan`]'s choice.
#[derive(Debug)]
pub struct IdentityHeaderValues {
    anonymous: bool,
    user: EncodedValue,
    /// Comma-separated, each encoded.
    roles: EncodedValue,
    teams: EncodedValue,
    basic_role: Option<HeaderValue>,
    email: Option<EncodedValue>,
    /// The token's `name` claim, when it is a non-empty string.
    name: Option<EncodedValue>,
}

impl IdentityHeaderValues {
    pub fn of(principal: &Principal) -> IdentityHeaderValues {
        let encoded = |value: &str| HeaderValue::try_from(encode_identity_value(value));
        let list = |values: &[String]| {
            HeaderValue::try_from(
                values
                    .iter()
                    .map(|value| encode_identity_value(value))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        };
        let display_name = principal
            .claims
            .get("name")
            .and_then(serde_json::Value::as_str)
            .filter(|name| !name.is_empty());
        IdentityHeaderValues {
            anonymous: principal.kind == PrincipalKind::Anonymous,
            user: encoded(&principal.username),
            roles: list(&principal.roles),
            teams: list(&principal.teams),
            basic_role: principal
                .basic_role
                .map(|role| HeaderValue::from_static(role.as_str())),
            email: principal.email.as_deref().map(encoded),
            name: display_name.map(encoded),
        }
    }
}

/// `X-Forwarded-For` as datagate vouches for it: the peer's address (`replace`), or, when
/// the peer is a trusted proxy (`append`), the client's list followed by the peer. A list
/// that is not all IP addresses is not kept.
fn forwarded_for(
    mode: ForwardedForMode,
    trusted_proxies: &[ipnet::IpNet],
    client_values: &[String],
    peer: Option<IpAddr>,
) -> Option<String> {
    let peer = peer?;
    let trusted_hop = mode == ForwardedForMode::Append
        && trusted_proxies
            .iter()
            .any(|network| network.contains(&peer));
    if trusted_hop {
        let entries: Vec<&str> = client_values
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let all_addresses =
            !entries.is_empty() && entries.iter().all(|entry| entry.parse::<IpAddr>().is_ok());
        if all_addresses {
            return Some(format!("{}, {peer}", entries.join(", ")));
        }
    }
    Some(address_text(peer))
}

/// `IpAddr`'s text without the formatting machinery for the usual IPv4 peer (written on
/// every forwarded request); IPv6 as `Display` writes it.
fn address_text(address: IpAddr) -> String {
    let IpAddr::V4(v4) = address else {
        return address.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// `10.0.0.5` (one address) or `10.42.0.0/16`.
fn parse_network(entry: &str) -> Option<ipnet::IpNet> {
    entry
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

fn valid_header_name(key: &str, name: &str) -> std::result::Result<(), (String, String)> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err((
            key.to_string(),
            format!("`{name}` is not a valid HTTP header name"),
        ));
    }
    Ok(())
}

/// A strip-list entry: a header name, or a prefix ending in `*`.
fn valid_list_entry(key: &str, entry: &str) -> std::result::Result<(), (String, String)> {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    if name.len() < 2 {
        return Err((
            key.to_string(),
            format!("`{entry}` is too short to be a header name or prefix"),
        ));
    }
    valid_header_name(key, name)
}

/// Removes any client copy of the database credential headers, then sets ours (when the
/// request's datasource uses IAM authentication).
pub fn replace_db_credential_headers(
    request: &mut RequestHeader,
    names: &crate::creds::DbCredentialHeaders,
    credentials: Option<&crate::creds::DbCredentials>,
) -> Result<()> {
    edit_upstream_headers(request, |headers| {
        for name in [&names.db_user, &names.db_token, &names.db_endpoint] {
            headers.remove(name.as_str());
        }
        write_db_credential_headers(headers, names, credentials)
    })
}

/// Sets the database-credential headers on a request that carries none.
fn write_db_credential_headers(
    headers: &mut http::HeaderMap,
    names: &crate::creds::DbCredentialHeaders,
    credentials: Option<&crate::creds::DbCredentials>,
) -> Result<()> {
    let Some(credentials) = credentials else {
        return Ok(());
    };
    let header = |name: &str, value: String, context: &'static str| {
        Ok::<_, Box<Error>>((
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| internal(context))?,
            HeaderValue::try_from(value).map_err(|_| internal(context))?,
        ))
    };
    let mut written = vec![
        header(
            &names.db_user,
            encode_identity_value(&credentials.user),
            "database user header",
        )?,
        header(
            &names.db_token,
            credentials.token.clone(),
            "database token header",
        )?,
    ];
    if let Some(endpoint) = &credentials.endpoint {
        written.push(header(
            &names.db_endpoint,
            encode_identity_value(endpoint),
            "database endpoint header",
        )?);
    }
    for (name, value) in written {
        headers.insert(name, value);
    }
    Ok(())
}

/// The upstream receives the path the route was matched on, so the two can never disagree.
pub fn set_canonical_path(
    request: &mut RequestHeader,
    canonical_path: &str,
    rewritten_query: Option<&str>,
) -> Result<()> {
    let query = rewritten_query.or(request.uri.query());
    // Usually the client sent the canonical path already: the URI is kept, not rebuilt.
    // Kept only if it is what goes on the wire (a target the URI does not reproduce,
    // absolute-form, is replaced by this origin-form one).
    if rewritten_query.is_none() && target_is_uri(request) && request.uri.path() == canonical_path {
        return Ok(());
    }
    let path_and_query = match query {
        Some(query) => format!("{canonical_path}?{query}"),
        None => canonical_path.to_string(),
    };
    let uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| internal("canonical path is not a valid URI"))?;
    request.set_uri(uri);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.100.1",
            "::1",
            "2001:db8::7",
        ] {
            let address: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(super::address_text(address), address.to_string());
        }
    }

    use super::*;
    use std::path::PathBuf;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
listen: {{proxy: "127.0.0.1:8080", admin: "127.0.0.1:9180"}}
upstream: {{address: "127.0.0.1:8088"}}
policy: {{model: casbin_model.conf, directory: policies}}
auth: {{}}
routes: {{}}
{extra}
"#
        );
        Config::from_yaml(&text, "test.yaml", PathBuf::from("/etc/datagate")).unwrap()
    }

    fn config_error(extra: &str) -> String {
        let text = format!(
            r#"
listen: {{proxy: "127.0.0.1:8080", admin: "127.0.0.1:9180"}}
upstream: {{address: "127.0.0.1:8088"}}
policy: {{model: casbin_model.conf, directory: policies}}
auth: {{}}
routes: {{}}
{extra}
"#
        );
        Config::from_yaml(&text, "test.yaml", PathBuf::from("/etc/datagate"))
            .unwrap_err()
            .to_string()
    }

    fn request(headers: &[(&str, &[u8])]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/api/v1/chart/1", None).unwrap();
        for (name, value) in headers {
            request
                .append_header(
                    name.to_string(),
                    http::HeaderValue::from_bytes(value).unwrap(),
                )
                .unwrap();
        }
        request
    }

    fn values(request: &RequestHeader, name: &str) -> Vec<String> {
        request
            .headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap().to_string())
            .collect()
    }

    fn user(name: &str, roles: &[&str]) -> Principal {
        let mut principal = Principal::anonymous(roles.iter().map(|r| r.to_string()).collect());
        principal.kind = PrincipalKind::User;
        principal.username = name.to_string();
        principal
    }

    #[test]
    fn identity_values_cannot_inject_headers_or_split_lists() {
        assert_eq!(
            encode_identity_value("alice@example.com"),
            "alice@example.com"
        );
        assert_eq!(encode_identity_value("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1");
        assert_eq!(encode_identity_value("a,b"), "a%2Cb");
        assert_eq!(encode_identity_value("50%"), "50%25");
        assert_eq!(encode_identity_value("Zoë"), "Zo%C3%AB");
        assert_eq!(encode_identity_value("Super Admin"), "Super Admin");
        assert_eq!(encode_identity_value(" Admin"), "%20Admin");
        assert_eq!(encode_identity_value("Admin  "), "Admin%20%20");
        assert_eq!(encode_identity_value("  "), "%20%20");
        assert_eq!(encode_identity_value("\"Admin\""), "%22Admin%22");
        assert_eq!(encode_identity_value("\tAdmin"), "%09Admin");
    }

    proptest::proptest! {
        /// Any spelling of a protected name — each `-` as `-` or `_`, any case — is removed,
        /// and only datagate's own value of the header reaches the upstream.
        #[test]
        fn every_spelling_of_a_protected_name_is_removed(
            which in 0usize..8,
            underscores in proptest::collection::vec(proptest::bool::ANY, 4),
            upper in proptest::collection::vec(proptest::bool::ANY, 24),
        ) {
            const NAMES: [&str; 8] = [
                "x-datagate-user",
                "x-datagate-roles",
                "x-datagate-db-token",
                "remote-user",
                "x-forwarded-host",
                "x-webauth-user",
                "x-http-method-override",
                "x-real-ip",
            ];
            let canonical = NAMES[which];
            let mut dashes = 0;
            let spelt: String = canonical
                .chars()
                .enumerate()
                .map(|(index, character)| {
                    let character = if character == '-' {
                        dashes += 1;
                        if underscores[(dashes - 1) % 4] { '_' } else { '-' }
                    } else {
                        character
                    };
                    if upper[index % 24] { character.to_ascii_uppercase() } else { character }
                })
                .collect();
            let plan = HeaderPlan::new(&config(""));
            proptest::prop_assert!(plan.is_protected(&spelt), "{}", spelt);
            let mut upstream = request(&[(spelt.as_str(), b"forged")]);
            plan.prepare_upstream_request(&mut upstream, &user("alice", &["Gamma"]), None, None)
                .unwrap();
            for (name, value) in upstream.headers.iter() {
                if normalized_name(name.as_str()) == canonical {
                    proptest::prop_assert_ne!(value.as_bytes(), b"forged".as_slice());
                }
            }
        }

        /// Whatever an identity value holds, it is a valid header value, decodes back to
        /// itself, and an upstream that splits a list on `,` and trims each item reads the
        /// same items datagate sent.
        #[test]
        fn identity_lists_read_the_same_after_split_and_trim(
            items in proptest::collection::vec(".{0,12}", 1..5),
        ) {
            let encoded: Vec<String> = items.iter().map(|item| encode_identity_value(item)).collect();
            let joined = encoded.join(",");
            proptest::prop_assert!(http::HeaderValue::from_str(&joined).is_ok(), "{}", joined);
            let read: Vec<String> = joined
                .split(',')
                .map(|item| {
                    percent_encoding::percent_decode_str(item.trim())
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                })
                .collect();
            proptest::prop_assert_eq!(read, items);
        }
    }

    /// The request goes on the wire as it was, but for the case of its field names:
    /// values, their order, repeated fields and a target the URI cannot reproduce all stay.
    #[test]
    fn edited_headers_keep_values_order_repeats_and_the_target() {
        let mut upstream = request(&[
            ("Accept", b"text/html"),
            ("X-Request-Id", b"abc"),
            ("Accept", b"application/json"),
            ("Host", b"bi.example.com"),
        ]);
        upstream
            .set_raw_path(b"http://bi.example.com/a/b?c=d")
            .unwrap();
        edit_upstream_headers(&mut upstream, |headers| {
            headers.remove("x-request-id");
            headers.append(
                http::HeaderName::from_static("x-added"),
                HeaderValue::from_static("1"),
            );
            Ok(())
        })
        .unwrap();
        assert_eq!(upstream.raw_path(), b"http://bi.example.com/a/b?c=d");
        let mut wire = Vec::new();
        upstream.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "accept: text/html\r\naccept: application/json\r\nHost: bi.example.com\r\n\
             x-added: 1\r\n"
        );
        // A refused edit still leaves a whole request behind (the caller refuses it).
        let refused = edit_upstream_headers(&mut upstream, |headers| {
            headers.clear();
            Err::<(), _>(internal("refused"))
        });
        assert!(refused.is_err());
        assert_eq!(upstream.raw_path(), b"http://bi.example.com/a/b?c=d");
    }

    /// An already-canonical path keeps its URI; any other target is replaced by the
    /// canonical origin-form one, with the query (or its rewrite).
    #[test]
    fn the_canonical_path_replaces_any_other_target() {
        let mut upstream = RequestHeader::build("GET", b"/api/v1/chart/1?q=1", None).unwrap();
        set_canonical_path(&mut upstream, "/api/v1/chart/1", None).unwrap();
        assert_eq!(upstream.raw_path(), b"/api/v1/chart/1?q=1");
        let mut upstream = RequestHeader::build("GET", b"/api//v1/./chart/1?q=1", None).unwrap();
        set_canonical_path(&mut upstream, "/api/v1/chart/1", None).unwrap();
        assert_eq!(upstream.raw_path(), b"/api/v1/chart/1?q=1");
        let mut upstream =
            RequestHeader::build("GET", b"http://evil.example/api/v1/chart/1", None).unwrap();
        set_canonical_path(&mut upstream, "/api/v1/chart/1", None).unwrap();
        assert_eq!(upstream.raw_path(), b"/api/v1/chart/1");
        let mut upstream = RequestHeader::build("GET", b"/api/v1/chart/1?q=1", None).unwrap();
        set_canonical_path(&mut upstream, "/api/v1/chart/1", Some("q=2")).unwrap();
        assert_eq!(upstream.raw_path(), b"/api/v1/chart/1?q=2");
    }

    #[test]
    fn a_role_with_a_leading_space_is_not_admin_to_an_upstream_that_trims() {
        let plan = HeaderPlan::new(&config(""));
        let mut upstream = request(&[]);
        plan.prepare_upstream_request(
            &mut upstream,
            &user("alice", &["Gamma", " Admin"]),
            None,
            None,
        )
        .unwrap();
        let roles = values(&upstream, "x-datagate-roles");
        assert_eq!(roles, vec!["Gamma,%20Admin"]);
        // What a Python upstream does with it: split, trim — no `Admin`.
        let read: Vec<&str> = roles[0].split(',').map(str::trim).collect();
        assert_eq!(read, vec!["Gamma", "%20Admin"]);
    }

    #[test]
    fn client_headers_that_fold_onto_protected_names_are_all_removed() {
        let plan = HeaderPlan::new(&config(""));
        let attack: &[(&str, &[u8])] = &[
            ("X_Datagate_User", b"root"),
            ("X-Datagate_Roles", b"Admin"),
            ("Remote_User", b"root"),
            ("Remote-User", b"root"),
            ("X_Datagate_Db_Token", b"stolen"),
            ("x-datagate-db-user", b"admin"),
            ("X-DATAGATE-TEAMS", b"finance"),
            ("X_Datagate_Anything_New", b"1"),
            ("X_WEBAUTH_USER", b"admin"),
            ("X-Webauth-Grafana-Admin", b"true"),
            ("X_Forwarded_Host", b"evil.example"),
            ("X-Forwarded-Prefix", b"/evil"),
            ("X-Forwarded-Port", b"1"),
            ("X-Forwarded-For", b"10.9.9.9"),
            ("Forwarded", b"for=10.9.9.9;host=evil.example"),
            ("X-Real-IP", b"10.9.9.9"),
            ("X-Original-URL", b"/admin"),
            ("X-Rewrite-URL", b"/admin"),
            ("X-HTTP-Method-Override", b"DELETE"),
            ("X_Method_Override", b"DELETE"),
            ("X-HTTP-Method", b"DELETE"),
            ("X_Remote_User", b"root"),
        ];
        let mut upstream = request(attack);
        upstream
            .append_header("Accept", "application/json")
            .unwrap();
        upstream.append_header("X-Request-Id", "abc").unwrap();
        plan.prepare_upstream_request(
            &mut upstream,
            &user("alice", &["Gamma"]),
            None,
            Some("127.0.0.1".parse().unwrap()),
        )
        .unwrap();
        let mut names: Vec<String> = upstream
            .headers
            .keys()
            .map(|name| name.as_str().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "accept",
                "x-datagate-roles",
                "x-datagate-teams",
                "x-datagate-user",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-request-id",
            ],
            "only datagate's own and harmless client headers remain"
        );
        assert_eq!(values(&upstream, "x-datagate-user"), vec!["alice"]);
        assert_eq!(values(&upstream, "x-datagate-roles"), vec!["Gamma"]);
        assert_eq!(values(&upstream, "x-forwarded-for"), vec!["127.0.0.1"]);
    }

    #[test]
    fn configured_strip_and_db_credential_names_are_protected_in_every_spelling() {
        let plan = HeaderPlan::new(&config(
            "identity_headers: {strip: [X-Superset-User, X-Tenant-*]}\naws: {headers: {db_token: X-Db-Pass}}",
        ));
        for name in [
            "X_Superset_User",
            "x-superset-user",
            "X_Tenant_Id",
            "X-Db_Pass",
            "X_Forwarded_Whatever",
        ] {
            assert!(plan.is_protected(name), "{name}");
        }
        for name in ["Accept", "X-Request-Id", "Cookie", "Authorization"] {
            assert!(!plan.is_protected(name), "{name}");
        }
    }

    #[test]
    fn two_authorization_headers_or_a_non_text_one_are_refused() {
        let credentials = ["authorization", "X-Api-Key"];
        let twice = request(&[
            ("Authorization", b"Bearer a"),
            ("Authorization", b"Bearer b"),
        ]);
        assert_eq!(
            check_client_headers(&twice.headers, &credentials)
                .unwrap_err()
                .kind(),
            "duplicate_credentials"
        );
        let binary = request(&[("Authorization", b"Bearer \xff\xfe")]);
        assert_eq!(
            check_client_headers(&binary.headers, &credentials)
                .unwrap_err()
                .kind(),
            "credential_not_text"
        );
        let keys = request(&[("X-Api-Key", b"a"), ("X-Api-Key", b"b")]);
        assert_eq!(
            check_client_headers(&keys.headers, &credentials)
                .unwrap_err()
                .kind(),
            "duplicate_credentials"
        );
        let underscore = request(&[("X_Api_Key", b"a")]);
        assert_eq!(
            check_client_headers(&underscore.headers, &credentials)
                .unwrap_err()
                .kind(),
            "ambiguous_header_name"
        );
        let fine = request(&[("Authorization", b"Bearer a"), ("X-Api-Key", b"k")]);
        assert_eq!(check_client_headers(&fine.headers, &credentials), Ok(()));
    }

    #[test]
    fn connection_may_not_nominate_what_datagate_decides_on() {
        let credentials = ["authorization", "X-Api-Key"];
        for nominated in [
            "Content-Type",
            "close, Authorization",
            "X-Api-Key",
            "x_forwarded_for",
            "Host",
            "X-Datagate-User",
        ] {
            let headers = request(&[("Connection", nominated.as_bytes())]);
            assert_eq!(
                check_client_headers(&headers.headers, &credentials)
                    .unwrap_err()
                    .kind(),
                "connection_nominates_protected",
                "{nominated}"
            );
        }
        let many = request(&[("Connection", b"a,b,c,d,e,f,g,h,i")]);
        assert_eq!(
            check_client_headers(&many.headers, &credentials)
                .unwrap_err()
                .kind(),
            "malformed_connection_header"
        );
        for fine in ["keep-alive", "close", "Upgrade", "TE, X-Private-Hop"] {
            let headers = request(&[("Connection", fine.as_bytes())]);
            assert_eq!(
                check_client_headers(&headers.headers, &credentials),
                Ok(()),
                "{fine}"
            );
        }
    }

    #[test]
    fn forwarded_for_is_replaced_unless_a_trusted_hop_appends() {
        use ForwardedForMode::{Append, Replace};
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let client = vec!["1.2.3.4".to_string()];
        let trusted = [parse_network("10.0.0.5").unwrap()];
        assert_eq!(
            forwarded_for(Replace, &trusted, &client, Some(peer)).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            forwarded_for(
                Append,
                &trusted,
                &["1.2.3.4, 5.6.7.8".to_string()],
                Some(peer)
            )
            .as_deref(),
            Some("1.2.3.4, 5.6.7.8, 10.0.0.5")
        );
        // A list that is not all addresses is not kept.
        assert_eq!(
            forwarded_for(Append, &trusted, &["1.2.3.4, evil".to_string()], Some(peer)).as_deref(),
            Some("10.0.0.5")
        );
        // An untrusted peer's list is not kept either.
        let other: IpAddr = "10.0.0.6".parse().unwrap();
        assert_eq!(
            forwarded_for(Append, &trusted, &client, Some(other)).as_deref(),
            Some("10.0.0.6")
        );
        // A range trusts every peer in it (ingress pods come and go).
        let range = [parse_network("10.0.0.0/24").unwrap()];
        assert_eq!(
            forwarded_for(Append, &range, &client, Some(other)).as_deref(),
            Some("1.2.3.4, 10.0.0.6")
        );
    }

    #[test]
    fn forwarded_host_comes_from_the_request_host_only_when_asked() {
        let mut upstream = request(&[("Host", b"bi.example.com"), ("X-Forwarded-Host", b"evil")]);
        HeaderPlan::new(&config(""))
            .prepare_upstream_request(&mut upstream, &user("alice", &[]), None, None)
            .unwrap();
        assert!(values(&upstream, "x-forwarded-host").is_empty());
        let mut upstream = request(&[("Host", b"bi.example.com"), ("X-Forwarded-Host", b"evil")]);
        HeaderPlan::new(&config(
            "forwarding: {x_forwarded_host: true, x_forwarded_proto: https}",
        ))
        .prepare_upstream_request(&mut upstream, &user("alice", &[]), None, None)
        .unwrap();
        assert_eq!(
            values(&upstream, "x-forwarded-host"),
            vec!["bi.example.com"]
        );
        assert_eq!(values(&upstream, "x-forwarded-proto"), vec!["https"]);
    }

    #[test]
    fn grafana_preset_sends_the_auth_proxy_headers() {
        let plan = HeaderPlan::new(&config("identity_headers: {preset: grafana}"));
        let mut principal = user("alice", &["Gamma"]);
        principal.email = Some("alice@example.com".to_string());
        principal.teams = vec!["analysts".to_string(), "eu".to_string()];
        principal.basic_role = Some(crate::principal::BasicRole::Editor);
        std::sync::Arc::make_mut(&mut principal.claims)
            .insert("name".to_string(), serde_json::json!("Alice Liddell"));
        let mut upstream = request(&[("X-WEBAUTH-USER", b"admin"), ("X_WEBAUTH_ROLE", b"Admin")]);
        plan.prepare_upstream_request(&mut upstream, &principal, None, None)
            .unwrap();
        assert_eq!(values(&upstream, "x-webauth-user"), vec!["alice"]);
        assert_eq!(
            values(&upstream, "x-webauth-email"),
            vec!["alice@example.com"]
        );
        assert_eq!(values(&upstream, "x-webauth-name"), vec!["Alice Liddell"]);
        assert_eq!(values(&upstream, "x-webauth-role"), vec!["Editor"]);
        assert_eq!(values(&upstream, "x-webauth-groups"), vec!["analysts,eu"]);
        assert!(values(&upstream, "x-datagate-user").is_empty());
        // No basic role: Grafana's `None`, so an earlier role is not kept.
        principal.basic_role = None;
        let mut upstream = request(&[]);
        plan.prepare_upstream_request(&mut upstream, &principal, None, None)
            .unwrap();
        assert_eq!(values(&upstream, "x-webauth-role"), vec!["None"]);
        // Anonymous callers are not signed in as a user called `anonymous`.
        let mut upstream = request(&[("X-WEBAUTH-USER", b"admin")]);
        plan.prepare_upstream_request(
            &mut upstream,
            &Principal::anonymous(vec!["Public".to_string()]),
            None,
            None,
        )
        .unwrap();
        assert!(
            upstream
                .headers
                .keys()
                .all(|name| !name.as_str().starts_with("x-webauth"))
        );
    }

    #[test]
    fn header_settings_errors_name_the_key() {
        let error = config_error("identity_headers: {preset: grafana, user: X-User}");
        assert!(error.contains("identity_headers.user"), "{error}");
        let error = config_error("identity_headers: {preset: looker}");
        assert!(error.contains("identity_headers.preset"), "{error}");
        let error = config_error("identity_headers: {email: \"bad header\"}");
        assert!(error.contains("identity_headers.email"), "{error}");
        let error = config_error("forwarding: {x_forwarded_for: append}");
        assert!(error.contains("forwarding.trusted_proxies"), "{error}");
        let error = config_error("forwarding: {strip: [\"X Bad\"]}");
        assert!(error.contains("forwarding.strip[0]"), "{error}");
        let error = config_error("forwarding: {x_forwarded_hots: true}");
        assert!(error.contains("x_forwarded_hots"), "{error}");
        let error =
            config_error("forwarding: {trusted_proxies: [not-an-ip], x_forwarded_for: append}");
        assert!(error.contains("forwarding.trusted_proxies[0]"), "{error}");
        config(
            "forwarding: {trusted_proxies: [10.0.0.5, 10.42.0.0/16, \"::1\"], x_forwarded_for: append}",
        );
    }
}
