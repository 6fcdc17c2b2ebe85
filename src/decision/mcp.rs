//! MCP (JSON-RPC over streamable HTTP): which tool a `tools/call` names, so that the
//! tool's own route — its permissions, datasource, SQL and chart-data checks — decides
//! the request. Runs after the body is parsed and before authorization.
//!
//! The request is read into one canonical `tools/call` — `{jsonrpc, id, method, params:
//! {name, arguments, _meta?}}` — in which a proxy call (`call_tool` naming another tool)
//! is replaced by the call it makes and an argument sent as a JSON string (Superset's
//! `request`) by the object it holds. Every later stage reads that canonical call, and it
//! is what the upstream receives (wrapped back into the proxy call when it came as one),
//! so the upstream reads exactly what datagate checked.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Refusal;
use super::authorize::Identified;
use super::request::{ParsedBody, ParsedRequest};
use crate::route::McpTools;

/// The JSON-RPC members of a request; any other is refused.
const ENVELOPE_MEMBERS: [&str; 4] = ["jsonrpc", "id", "method", "params"];
/// The members of a `tools/call`'s `params`; any other (e.g. a task request) is refused.
const CALL_MEMBERS: [&str; 3] = ["name", "arguments", "_meta"];
/// The members of a proxy tool's arguments (`call_tool`).
const PROXY_MEMBERS: [&str; 2] = ["name", "arguments"];

/// A tool's name and arguments as a request states them (arguments absent or `null`: none).
struct NamedCall<'v> {
    name: &'v str,
    arguments: Option<&'v Map<String, Value>>,
}

/// The JSON-RPC call of an MCP request, once its tool is known.
#[derive(Debug, Clone, Default)]
pub struct McpCall {
    /// The request's `id`, for a JSON-RPC error answer (`null` until a valid one is read).
    pub id: Value,
    /// `Some` for `tools/call`: the tool that decides (the one a proxy names).
    pub tool: Option<String>,
    /// The proxy tool the call came through (`call_tool`), if any.
    pub proxy: Option<String>,
}

/// Whether the identified route is an MCP endpoint.
pub fn is_mcp(identified: &Identified<'_>) -> bool {
    identified
        .route
        .as_ref()
        .is_some_and(|(route, _)| route.mcp().is_some())
}

/// On an MCP route, reads the JSON-RPC request. A method other than `tools/call` passes
/// only when the route lists it. For `tools/call`, the identified route becomes the
/// tool's own (`mcp.<tool>`) and the canonical call is returned: the request every later
/// stage reads. Batches are refused: each call must be decided on its own. `call`
/// receives the request's id as soon as it is known, so that every refusal carries it.
pub fn select_mcp_tool(
    identified: &mut Identified<'_>,
    request: &ParsedRequest,
    call: &mut McpCall,
) -> Result<Option<ParsedRequest>, Refusal> {
    let Some((route, params)) = &identified.route else {
        return Ok(None);
    };
    let Some(tools) = route.mcp() else {
        return Ok(None);
    };
    let document = request.json().ok_or_else(|| {
        Refusal::McpInvalid("the body must be one JSON-RPC request in JSON".into())
    })?;
    let Some(envelope) = document.as_object() else {
        return Err(Refusal::McpInvalid(
            "batch requests are not supported; send one JSON-RPC request per HTTP request".into(),
        ));
    };
    call.id = request_id(envelope)?;
    if let Some(member) = envelope
        .keys()
        .find(|key| !ENVELOPE_MEMBERS.contains(&key.as_str()))
    {
        return Err(invalid(format!(
            "`{member}` is not a JSON-RPC request member"
        )));
    }
    if envelope.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(invalid("`jsonrpc` must be \"2.0\"".into()));
    }
    let method = envelope
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`method` is missing or not a string".into()))?;
    if method != "tools/call" {
        if tools.allows_method(method) {
            return Ok(None);
        }
        return Err(Refusal::McpMethodRefused(method.to_string()));
    }
    let params_object = envelope
        .get("params")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("`params` of `tools/call` must be an object".into()))?;
    if let Some(member) = params_object
        .keys()
        .find(|key| !CALL_MEMBERS.contains(&key.as_str()))
    {
        return Err(invalid(format!("`params.{member}` is not supported")));
    }
    let mut named = name_and_arguments(params_object, "params")?;
    if tools.is_proxy(named.name) {
        call.proxy = Some(named.name.to_string());
        named = proxied_call(tools, named)?;
    }
    let name = named.name;
    let arguments = named.arguments.cloned().unwrap_or_default();
    let tool = tools
        .tool(name)
        .ok_or_else(|| Refusal::McpUnknownTool(name.to_string()))?;
    let arguments = canonical_arguments(tools, name, arguments)?;
    let mut canonical_params = Map::new();
    canonical_params.insert("name".into(), Value::String(name.to_string()));
    canonical_params.insert("arguments".into(), Value::Object(arguments));
    if let Some(meta) = params_object.get("_meta") {
        if !meta.is_object() {
            return Err(invalid("`params._meta` must be an object".into()));
        }
        canonical_params.insert("_meta".into(), meta.clone());
    }
    let mut canonical = Map::new();
    canonical.insert("jsonrpc".into(), Value::String("2.0".into()));
    if let Some(id) = envelope.get("id") {
        canonical.insert("id".into(), id.clone());
    }
    canonical.insert("method".into(), Value::String("tools/call".into()));
    canonical.insert("params".into(), Value::Object(canonical_params));
    let params = params.clone();
    identified.route = Some((tool, params));
    call.tool = Some(name.to_string());
    Ok(Some(ParsedRequest {
        query: request.query.clone(),
        body: ParsedBody::Json(Value::Object(canonical)),
    }))
}

/// The body the upstream receives for a checked call: the canonical call as forwarded
/// (`canonical`, serialized by the SQL rewrite or from the checked value), wrapped back
/// into the proxy call when it came as one.
pub fn forwarded_body(call: &McpCall, canonical: Bytes) -> Result<Bytes, Refusal> {
    let Some(proxy) = &call.proxy else {
        return Ok(canonical);
    };
    // datagate's own serialization of the canonical call, read back to wrap it.
    let mut document: Value =
        serde_json::from_slice(&canonical).map_err(|_| Refusal::BodyUnreadable)?;
    let params = document
        .get_mut("params")
        .and_then(Value::as_object_mut)
        .ok_or(Refusal::BodyUnreadable)?;
    let name = params.remove("name").ok_or(Refusal::BodyUnreadable)?;
    let arguments = params.remove("arguments").ok_or(Refusal::BodyUnreadable)?;
    let mut proxied = Map::new();
    proxied.insert("name".into(), name);
    proxied.insert("arguments".into(), arguments);
    params.insert("name".into(), Value::String(proxy.clone()));
    params.insert("arguments".into(), Value::Object(proxied));
    serde_json::to_vec(&document)
        .map(Bytes::from)
        .map_err(|_| Refusal::BodyUnreadable)
}

fn invalid(message: String) -> Refusal {
    Refusal::McpInvalid(message)
}

/// The request's id: a string, an integer, or absent / `null` (a notification).
fn request_id(envelope: &Map<String, Value>) -> Result<Value, Refusal> {
    match envelope.get("id") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(id)) => Ok(Value::String(id.clone())),
        Some(Value::Number(id)) if id.is_i64() || id.is_u64() => Ok(Value::Number(id.clone())),
        Some(_) => Err(invalid("`id` must be a string or an integer".into())),
    }
}

/// `name` (a string) and `arguments` (an object; absent or `null` is none) of a call.
fn name_and_arguments<'v>(
    object: &'v Map<String, Value>,
    location: &str,
) -> Result<NamedCall<'v>, Refusal> {
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("`{location}.name` is missing or not a string")))?;
    let arguments = match object.get("arguments") {
        None | Some(Value::Null) => None,
        Some(Value::Object(arguments)) => Some(arguments),
        Some(_) => {
            return Err(invalid(format!("`{location}.arguments` must be an object")));
        }
    };
    Ok(NamedCall { name, arguments })
}

/// The call a proxy tool makes: its `name` and `arguments`. A proxy may not name a proxy
/// (Superset refuses that too), so the named tool is decided by the same code as a
/// direct call, once.
fn proxied_call<'v>(tools: &McpTools, proxy_call: NamedCall<'v>) -> Result<NamedCall<'v>, Refusal> {
    let proxy = proxy_call.name;
    let arguments = proxy_call.arguments;
    let location = format!("params.arguments (of `{proxy}`)");
    let Some(arguments) = arguments else {
        return Err(invalid(format!(
            "`{location}.name` is missing or not a string"
        )));
    };
    if let Some(member) = arguments
        .keys()
        .find(|key| !PROXY_MEMBERS.contains(&key.as_str()))
    {
        return Err(invalid(format!(
            "`{proxy}` takes `name` and `arguments`, not `{member}`"
        )));
    }
    let inner = name_and_arguments(arguments, &location)?;
    if tools.is_proxy(inner.name) {
        return Err(invalid(format!(
            "`{proxy}` cannot call the proxy tool `{}`",
            inner.name
        )));
    }
    Ok(inner)
}

/// The arguments as forwarded: each argument the route reads from a JSON string is
/// parsed strictly (repeated and case-folded keys refused) and must be an object.
fn canonical_arguments(
    tools: &McpTools,
    tool: &str,
    mut arguments: Map<String, Value>,
) -> Result<Map<String, Value>, Refusal> {
    for name in tools.json_string_arguments() {
        let Some(Value::String(text)) = arguments.get(name) else {
            continue;
        };
        let value = crate::json_guard::parse_strict(text.as_bytes()).map_err(|error| {
            invalid(format!(
                "`{name}` of `{tool}` is a string that is not one JSON object: {error}"
            ))
        })?;
        if !value.is_object() {
            return Err(invalid(format!(
                "`{name}` of `{tool}` is a JSON string that holds no object"
            )));
        }
        arguments.insert(name.clone(), value);
    }
    Ok(arguments)
}
