//! The JSON schema of the config file and a Markdown reference page, both generated from the
//! [`Settings`](crate::Settings) types and committed under `docs/` (a test checks they are fresh).

use serde_json::Value;

/// The JSON schema of `config.toml`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(crate::Settings);
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// The schema as pretty JSON with a trailing newline (the committed file's content).
pub fn json_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    s.push('\n');
    s
}

/// A Markdown reference of every config key with its type, default and description.
pub fn reference_markdown() -> String {
    let schema = json_schema();
    let defaults = serde_json::to_value(crate::Settings::default()).unwrap_or(Value::Null);
    let mut out = String::from(
        "# Configuration reference\n\n<!-- Generated from the settings types by `ondevice config reference`; do not edit. -->\n\n\
         The config file is TOML, read from `$ONDEVICE_CONFIG` or `<platform config dir>/ondevice/config.toml`\n\
         (a missing file means defaults). Unknown keys are errors. Check a file with `ondevice config check FILE`;\n\
         see the resolved settings with `ondevice config show`. The JSON schema is `docs/config.schema.json`.\n",
    );
    section(&schema, &schema, &defaults, "", &mut out);
    out
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        if let Some(target) = root.get("$defs").and_then(|d| d.get(name)) {
            return target;
        }
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
        if let Some(first) = any.iter().find(|v| v.get("type") != Some(&Value::from("null"))) {
            return resolve(root, first);
        }
    }
    node
}

fn type_name(root: &Value, node: &Value) -> String {
    let n = resolve(root, node);
    if let Some(e) = n.get("enum").and_then(Value::as_array) {
        return e.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" \\| ");
    }
    if let Some(one) = n.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = one
            .iter()
            .filter_map(|v| v.get("const").or_else(|| v.get("enum").and_then(|e| e.get(0))))
            .map(|v| v.to_string())
            .collect();
        if !names.is_empty() {
            return names.join(" \\| ");
        }
    }
    match n.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" or ")
        }
        _ => "table".to_owned(),
    }
}

fn section(root: &Value, node: &Value, defaults: &Value, prefix: &str, out: &mut String) {
    let node = resolve(root, node);
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let mut tables = Vec::new();
    let mut rows = Vec::new();
    for (key, prop) in props {
        let target = resolve(root, prop);
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        // The value in the parent's defaults, else the schema's own default for the key (keys of
        // tables inside maps such as `[runtimes.NAME.health]` have no parent default).
        let default = defaults.get(key).filter(|v| !v.is_null()).or_else(|| prop.get("default")).cloned();
        if target.get("properties").is_some() {
            tables.push((full, prop, default.unwrap_or(Value::Null)));
        } else if let Some(value) =
            target.get("additionalProperties").filter(|v| resolve(root, v).get("properties").is_some())
        {
            // A map of tables such as `[workers.NAME]`: document the value type.
            tables.push((format!("{full}.<name>"), value, Value::Null));
        } else {
            let desc = prop
                .get("description")
                .or_else(|| target.get("description"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .replace('\n', " ");
            let default = match default {
                Some(Value::Null) | None => "—".to_owned(),
                Some(v) => format!("`{v}`"),
            };
            rows.push(format!("| `{key}` | {} | {default} | {desc} |", type_name(root, prop)));
        }
    }
    if !rows.is_empty() {
        let title = if prefix.is_empty() { "(top level)".to_owned() } else { format!("[{prefix}]") };
        let desc = node.get("description").and_then(Value::as_str).unwrap_or("");
        out.push_str(&format!(
            "\n## `{title}`\n\n{desc}\n\n| key | type | default | description |\n|---|---|---|---|\n"
        ));
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    for (full, prop, d) in tables {
        section(root, prop, &d, &full, out);
    }
}
