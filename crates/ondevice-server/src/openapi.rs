//! The OpenAPI 3.1 document: metadata and security schemes here, paths from the handlers'
//! annotations. The document is committed as `openapi.json`; a test fails when it is stale.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ondevice",
        description = "Private, local AI model runtime. Every route except /healthz, /readyz and /openapi.json needs an API key: `Authorization: Bearer <key>` or `x-api-key: <key>` (or the web console's session cookie with its CSRF token, see /api/v1/ui/session).",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(
        crate::routes::jobs::PullDetailView,
        crate::routes::jobs::JobStateName,
        crate::routes::models::ModelRefSchema,
        crate::routes::keys::ScopeName,
        PackNameSchema,
        PackRefSchema,
        VersionSchema,
        CollectionNameSchema,
        BlobDigestSchema,
        ModelNameSchema
    )),
    tags(
        (name = "probes", description = "Public liveness and readiness"),
        (name = "meta", description = "Metrics and this document"),
        (name = "daemon", description = "Status and events"),
        (name = "models", description = "The local model registry"),
        (name = "jobs", description = "Background jobs (model pulls) and their progress"),
        (name = "runtimes", description = "Runtimes and loaded models"),
        (name = "collections", description = "Vector collections: documents, queries, indexing (reads and queries: read; writes: models)"),
        (name = "prompts", description = "Versioned prompt packs: list, show, render (read); publish, rollback, delete (models)"),
        (name = "openai", description = "OpenAI-compatible inference"),
        (name = "ollama", description = "Ollama-compatible inference"),
        (name = "keys", description = "API key management (admin)"),
        (name = "diagnostics", description = "Redacted diagnostics bundles, doctor checks, telemetry status and preview (admin, read-only)"),
        (name = "ui", description = "Web console sessions: a key (or a one-time login link) exchanged for an HttpOnly session cookie")
    )
)]
struct Base;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("odk_<id>_<secret>").build(),
            ),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "ondevice_session",
                "The web console's session (POST /api/v1/ui/session), accepted in place of a key on every route                  with the key's scopes; other methods than GET, HEAD and OPTIONS also need `X-CSRF-Token`",
            ))),
        );
    }
}

/// The document before paths are added.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// Answers every operation can give but no handler lists one by one, added to the finished
/// document so the spec states what the edge does for all routes alike: 401 and 403 from the key
/// check on every operation behind a key, 400 for a malformed body, query or path (the JSON
/// rejection and the path-segment checks), and 404 where the path names something that may not
/// exist. Answers a handler documents itself keep their own description.
pub(crate) fn complete(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.head,
            &mut item.patch,
            &mut item.options,
            &mut item.trace,
        ];
        for op in operations.into_iter().flatten() {
            complete_operation(op);
        }
    }
}

fn complete_operation(op: &mut Operation) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    if !secured {
        return;
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_input = op.request_body.is_some() || !params.is_empty();
    let names_something = params.iter().any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path));
    let mut add = |code: &str, description: &str| {
        op.responses.responses.entry(code.to_owned()).or_insert_with(|| {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            RefOr::T(ResponseBuilder::new().description(description).content("application/json", body).build())
        });
    };
    add("401", "Missing or invalid key");
    add("403", "Key lacks the scope");
    if has_input {
        add("400", "Malformed request: the body, a query parameter or a path segment");
    }
    if names_something {
        add("404", "Nothing by that name");
    }
}

/// Pretty JSON with a trailing newline (the committed file's form).
pub fn to_json(doc: &utoipa::openapi::OpenApi) -> String {
    let mut s = doc.to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// A string schema with a pattern, for path and query parameters whose grammar the server checks,
/// so generated clients and schema-driven tests send names the daemon accepts.
macro_rules! pattern_schema {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $pattern:expr, $max:expr, $description:literal) => {
        $(#[$doc])*
        pub struct $ty;

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .min_length(Some(1))
                    .max_length(Some($max))
                    .description(Some($description))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
        }
    };
}

pattern_schema!(
    /// A prompt pack name: what `ondevice_prompts::pack::validate_name` accepts.
    PackNameSchema,
    "PackName",
    r"^[a-z0-9][a-z0-9._-]{0,63}$",
    64,
    "Pack name: lowercase letters, digits, `.`, `_`, `-`"
);

pattern_schema!(
    /// A prompt pack reference: `name`, `name@1.2.0`, `name@^1.2` or `name@label`.
    PackRefSchema,
    "PackRef",
    r"^[a-z0-9][a-z0-9._-]{0,63}(@([a-z][a-z0-9_-]{0,31}|[\^~=]?(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){0,2}))?$",
    110,
    "`name`, `name@1.2.0`, `name@^1.2` or `name@label`"
);

pattern_schema!(
    /// A published semantic version.
    VersionSchema,
    "PackVersion",
    r"^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})(-(0|[1-9][0-9]{0,5}|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]{0,5}|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?$",
    64,
    "A semantic version such as `1.2.0`"
);

pattern_schema!(
    /// A collection name: what `ondevice_vector::validate_collection_name` accepts.
    CollectionNameSchema,
    "CollectionName",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    64,
    "Collection name: letters, digits, `_`, `.`, `-`, starting with a letter or digit"
);

pattern_schema!(
    /// A blob digest as Ollama names it.
    BlobDigestSchema,
    "BlobDigest",
    r"^sha256:[0-9a-f]{64}$",
    71,
    "`sha256:<64 hex>`"
);

pattern_schema!(
    /// A model name to create (`name[:tag]`, never a digest): the target of a copy.
    ModelNameSchema,
    "ModelName",
    r"^[a-z0-9]([a-z0-9_-]|\.[a-z0-9_-])*\.?(/[a-z0-9]([a-z0-9_-]|\.[a-z0-9_-])*\.?)*(:[A-Za-z0-9]([A-Za-z0-9_-]|\.[A-Za-z0-9_-]){0,31}\.?)?$",
    128,
    "`name[:tag]`: lowercase letters, digits, `.`, `_`, `-`, `/`; tag default `latest`"
);
