//! Wires the vector store for `serve`: the embedded backend (always, in `$ONDEVICE_HOME/vectors`)
//! and the pgvector backend when `[vector] url` is set, behind one `Collections` service.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ondevice_config::Settings;
use ondevice_config::vector::VectorBackendKind;
use ondevice_runtime::Inference;
use ondevice_store::Store;
use ondevice_vector::{Collections, VectorBackend};

/// The collection service over the configured backends.
pub async fn collections(
    settings: &Settings,
    home: &Path,
    store: Arc<Store>,
    inference: Arc<dyn Inference>,
) -> anyhow::Result<Collections> {
    let dir = home.join("vectors");
    let embedded = ondevice_vector_embedded::EmbeddedBackend::open(store, &dir)
        .with_context(|| format!("cannot open the vector store in {}", dir.display()))?;
    let mut backends: Vec<Arc<dyn VectorBackend>> = vec![Arc::new(embedded)];
    if let Some(url) = &settings.vector.url {
        let conninfo = url.resolve().context("[vector] url")?;
        let pg = ondevice_vector_pgvector::PgVectorBackend::connect(conninfo.expose(), 4)
            .await
            .context("cannot connect to PostgreSQL for the pgvector backend ([vector] url)")?;
        backends.push(Arc::new(pg));
    }
    let default = settings.vector.backend;
    if default == VectorBackendKind::Pgvector && backends.len() < 2 {
        anyhow::bail!("[vector] backend = \"pgvector\" needs [vector] url");
    }
    let collections = Collections::new(backends, default.as_str(), inference);
    collections.set_index_roots(&settings.vector.index_roots);
    Ok(collections)
}
