//! Completes the OpenAPI document utoipa generates from the router, so it says what the
//! handlers do: every status an operation can answer, ids as the positive integers
//! [`super::support::parse_id`] accepts, and names as the strings the store's name check
//! accepts. Runs once, when `/api/openapi.json` is first served.
//!
//! The rules live here, beside each other, rather than on every annotation, so a new
//! route gets them without anyone remembering to; `tests/openapi.rs` holds the document
//! to the handlers with `openapi-spec-validator` and schemathesis.

use serde_json::{Value, json};

/// The names the store accepts (`check_name` in `src/store/changes.rs`): 1 to 190
/// characters, no surrounding whitespace, no control characters, no `,` `"` `#` (the
/// policy grammar's).
pub const NAME_PATTERN: &str = "^[^\\s,\"#\\u0000-\\u001f\\u007f-\\u009f](?:[^,\"#\\u0000-\\u001f\\u007f-\\u009f]*[^\\s,\"#\\u0000-\\u001f\\u007f-\\u009f])?$";

/// A datasource uid: a name without `:`, `*` or `/` (they would change the policy object).
pub const DATASOURCE_UID_PATTERN: &str = "^[^\\s,\"#:*/\\u0000-\\u001f\\u007f-\\u009f](?:[^,\"#:*/\\u0000-\\u001f\\u007f-\\u009f]*[^\\s,\"#:*/\\u0000-\\u001f\\u007f-\\u009f])?$";

/// A role permission: `can_` then a name's characters.
pub const ROLE_PERMISSION_PATTERN: &str =
    "^can_(?:[^,\"#\\u0000-\\u001f\\u007f-\\u009f]*[^\\s,\"#\\u0000-\\u001f\\u007f-\\u009f])?$";

/// Grafana basic roles, in any case (identity providers disagree on it).
pub const BASIC_ROLE_PATTERN: &str =
    "^([Vv][Ii][Ee][Ww][Ee][Rr]|[Ee][Dd][Ii][Tt][Oo][Rr]|[Aa][Dd][Mm][Ii][Nn])$";

pub const MAX_NAME_CHARACTERS: u64 = 190;

fn name_schema(pattern: &str) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARACTERS, "pattern": pattern})
}

/// The constraints of each request schema's fields, as the handlers enforce them.
fn field_constraints() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("UserInput", "login", name_schema(NAME_PATTERN)),
        (
            "UserInput",
            "roles",
            json!({"type": "array", "items": name_schema(NAME_PATTERN)}),
        ),
        (
            "UserInput",
            "basic_role",
            json!({"type": ["string", "null"], "pattern": BASIC_ROLE_PATTERN}),
        ),
        ("TeamInput", "name", name_schema(NAME_PATTERN)),
        ("CreateToken", "name", name_schema(NAME_PATTERN)),
        ("RoleInput", "name", name_schema(NAME_PATTERN)),
        ("RolePermission", "view", name_schema(NAME_PATTERN)),
        (
            "RolePermission",
            "permission",
            json!({"type": "string", "minLength": 4, "maxLength": MAX_NAME_CHARACTERS, "pattern": ROLE_PERMISSION_PATTERN}),
        ),
        (
            "DatasourceInput",
            "uid",
            name_schema(DATASOURCE_UID_PATTERN),
        ),
        ("DatasourceInput", "name", name_schema(NAME_PATTERN)),
        (
            "MemberInput",
            "user_id",
            json!({"type": "integer", "format": "int64", "minimum": 1}),
        ),
        (
            "SetPermission",
            "permission",
            json!({"type": "string", "enum": ["Query", "Edit", "Admin", ""],
                   "description": "the level to grant; `\"\"` removes the grant"}),
        ),
    ]
}

/// The error responses an operation can give beyond those its annotation lists.
fn standard_errors(
    path: &str,
    method: &str,
    operation: &Value,
) -> Vec<(&'static str, &'static str)> {
    let secured = operation.get("security").is_some();
    let has_parameters = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|parameters| !parameters.is_empty());
    let has_body = operation.get("requestBody").is_some();
    let mut errors = Vec::new();
    if has_parameters || has_body {
        errors.push((
            "400",
            "malformed input: a path id, query parameter or body the endpoint does not accept",
        ));
    }
    if secured {
        errors.push(("401", "no, expired or invalid credentials"));
        errors.push(("403", "the caller lacks the permission this endpoint needs"));
        errors.push((
            "503",
            "no grants store is configured, or it does not answer",
        ));
    }
    if path.contains('{') {
        errors.push(("404", "no such resource"));
    }
    if has_body {
        errors.push(("413", "the body is larger than the admin API accepts"));
    }
    let management = [
        "/api/users",
        "/api/serviceaccounts",
        "/api/teams",
        "/api/roles",
        "/api/rls",
        "/api/datasources",
    ];
    if matches!(method, "post" | "put") && management.iter().any(|prefix| path.starts_with(prefix))
    {
        errors.push(("409", "the name is taken"));
    }
    errors
}

/// Ids in paths are positive 64-bit integers.
fn constrain_path_ids(operation: &mut Value) {
    let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for parameter in parameters {
        let in_path = parameter.get("in").and_then(Value::as_str) == Some("path");
        let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) else {
            continue;
        };
        if in_path && schema.get("type").and_then(Value::as_str) == Some("integer") {
            schema.insert("minimum".into(), json!(1));
            schema.insert("maximum".into(), json!(i64::MAX));
        }
        if in_path && schema.get("type").and_then(Value::as_str) == Some("string") {
            // An empty segment never reaches the handler: the router needs one.
            schema.entry("minLength").or_insert(json!(1));
        }
    }
}

/// The finished document as JSON.
pub fn complete(document: &mut Value) {
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let errors = standard_errors(path, method, operation);
                constrain_path_ids(operation);
                let responses = operation
                    .as_object_mut()
                    .map(|operation| operation.entry("responses").or_insert_with(|| json!({})));
                let Some(Value::Object(responses)) = responses else {
                    continue;
                };
                for (status, description) in errors {
                    responses
                        .entry(status)
                        .or_insert_with(|| message_response(description));
                }
                for response in responses.values_mut() {
                    ensure_json_body(response);
                }
            }
        }
    }
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (schema, field, constraint) in field_constraints() {
            if let Some(properties) = schemas
                .get_mut(schema)
                .and_then(|schema| schema.get_mut("properties"))
                .and_then(Value::as_object_mut)
                && let Some(property) = properties.get_mut(field)
            {
                let description = property.get("description").cloned();
                *property = constraint;
                if let (Some(description), Some(object)) = (description, property.as_object_mut()) {
                    object.entry("description").or_insert(description);
                }
            }
        }
    }
}

fn message_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}
    })
}

/// Every admin answer is JSON (errors included): a response documented without a body
/// gets the error shape for 4xx/5xx and any JSON for the rest.
fn ensure_json_body(response: &mut Value) {
    let Some(object) = response.as_object_mut() else {
        return;
    };
    if object.contains_key("content") {
        return;
    }
    object.insert(
        "content".into(),
        json!({"application/json": {"schema": {}}}),
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_secured_write_documents_the_errors_it_can_answer() {
        let mut document = json!({
            "paths": {"/api/teams/{id}": {"put": {
                "security": [{"bearer": []}],
                "parameters": [{"name": "id", "in": "path", "schema": {"type": "integer"}}],
                "requestBody": {},
                "responses": {"200": {"description": "ok"}}
            }}},
            "components": {"schemas": {"TeamInput": {"properties": {"name": {"type": "string"}}}}}
        });
        complete(&mut document);
        let operation = &document["paths"]["/api/teams/{id}"]["put"];
        for status in ["200", "400", "401", "403", "404", "409", "413", "503"] {
            assert!(operation["responses"].get(status).is_some(), "{status}");
        }
        assert_eq!(operation["parameters"][0]["schema"]["minimum"], 1);
        assert_eq!(
            document["components"]["schemas"]["TeamInput"]["properties"]["name"]["minLength"],
            1
        );
    }
}
