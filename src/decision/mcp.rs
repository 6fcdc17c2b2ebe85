//! MCP (JSON-RPC over HTTP): which tool a `tools/call` names, so that the tool's own
//! route — its permissions, datasource and SQL — decides the request. Runs after the body
//! is parsed and before authorization.

use super::Refusal;
use super::authorize::Identified;
use super::request::ParsedRequest;

/// The JSON-RPC call of an MCP request, once its tool is known.
#[derive(Debug, Clone, Default)]
pub struct McpCall {
    /// The request's `id`, for a JSON-RPC error answer.
    pub id: serde_json::Value,
    /// `Some` for `tools/call`.
    pub tool: Option<String>,
}

/// Whether the identified route is an MCP endpoint.
pub fn is_mcp(identified: &Identified<'_>) -> bool {
    identified
        .route
        .as_ref()
        .is_some_and(|(route, _)| route.mcp().is_some())
}

/// On an MCP route, reads the JSON-RPC request and, for `tools/call`, switches the
/// identified route to the tool's own route (`mcp.<tool>`), whose checks and SQL then
/// apply. Batches are refused: each call must be decided on its own. `call` receives the
/// request's id as soon as it is known, so that every refusal can carry it.
pub fn select_mcp_tool(
    identified: &mut Identified<'_>,
    request: &ParsedRequest,
    call: &mut McpCall,
) -> Result<(), Refusal> {
    let Some((route, params)) = &identified.route else {
        return Ok(());
    };
    let Some(tools) = route.mcp() else {
        return Ok(());
    };
    let document = request.json().ok_or_else(|| {
        Refusal::McpInvalid("the body must be one JSON-RPC request in JSON".into())
    })?;
    let Some(object) = document.as_object() else {
        return Err(Refusal::McpInvalid(
            "batch requests are not supported; send one JSON-RPC request per HTTP request".into(),
        ));
    };
    call.id = object.get("id").cloned().unwrap_or(serde_json::Value::Null);
    let method = object
        .get("method")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Refusal::McpInvalid("`method` is missing or not a string".into()))?;
    if method != "tools/call" {
        return Ok(());
    }
    let name = object
        .get("params")
        .and_then(|params| params.get("name"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Refusal::McpInvalid("`params.name` is missing or not a string".into()))?;
    let tool = tools
        .tool(name)
        .ok_or_else(|| Refusal::McpUnknownTool(name.to_string()))?;
    let params = params.clone();
    identified.route = Some((tool, params));
    call.tool = Some(name.to_string());
    Ok(())
}
