//! The OpenAPI 3.1 document: metadata and security schemes here, paths from the handlers'
//! annotations. The document is committed as `openapi.json`; a test fails when it is stale.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ondevice",
        description = "Private, local AI model runtime. Every route except /healthz, /readyz and /openapi.json needs an API key: `Authorization: Bearer <key>` or `x-api-key: <key>`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(
        crate::routes::jobs::PullDetailView,
        crate::routes::jobs::JobStateName,
        crate::routes::models::ModelRefSchema,
        crate::routes::keys::ScopeName
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
        (name = "diagnostics", description = "Redacted diagnostics bundles (admin)")
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
    }
}

/// The document before paths are added.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// Pretty JSON with a trailing newline (the committed file's form).
pub fn to_json(doc: &utoipa::openapi::OpenApi) -> String {
    let mut s = doc.to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}
