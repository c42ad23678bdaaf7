//! The contracts the edge depends on for its services. Handlers call these traits through
//! `Arc<dyn …>` held in [`crate::AppState`]; the binary wires the implementations. Each method
//! answers an [`ApiError`] already mapped (in `error.rs`), so handlers only forward it.
//!
//! [`RegistryModels`] implements [`ModelService`] over the model registry for the binary and the
//! tests; nothing else in the edge names the registry itself.

use std::path::PathBuf;
use std::sync::Arc;

use ondevice_registry::{GcReport, ImportMode, ModelRecord, ModelRef, Registry, RegistryError, VerifyReport};

use crate::error::ApiError;
use crate::state::BoxFuture;

/// The local model registry as the edge uses it: the native models routes, the gRPC
/// `ModelsService` and the catalog's "already present" marks. Implementations keep blocking work
/// (hashing, copying, SQLite) off the async runtime.
pub trait ModelService: Send + Sync {
    /// Every registered model.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelRecord>, ApiError>>;
    /// One model, by `name:tag` or digest.
    fn show(&self, model: ModelRef) -> BoxFuture<'_, Result<ModelRecord, ApiError>>;
    /// Imports a file, Hugging Face directory or bundle from the daemon's filesystem as `name`
    /// (default: from the file), its files stored as `mode` says.
    fn import(
        &self,
        path: PathBuf,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> BoxFuture<'_, Result<ModelRecord, ApiError>>;
    /// Registers the model `from` names under `to` as well (same blobs; Ollama's `copy`).
    fn copy(&self, from: ModelRef, to: ModelRef) -> BoxFuture<'_, Result<ModelRecord, ApiError>>;
    /// Removes the models a reference names; returns them.
    fn remove(&self, model: ModelRef) -> BoxFuture<'_, Result<Vec<ModelRecord>, ApiError>>;
    /// Pins or unpins the models a reference names; returns them as they are now.
    fn set_pinned(&self, model: ModelRef, pinned: bool) -> BoxFuture<'_, Result<Vec<ModelRecord>, ApiError>>;
    /// Re-hashes the blobs of one model, or of every model.
    fn verify(&self, model: Option<ModelRef>) -> BoxFuture<'_, Result<Vec<VerifyReport>, ApiError>>;
    /// Deletes blobs nothing references and stale partial files.
    fn gc(&self) -> BoxFuture<'_, Result<GcReport, ApiError>>;
    /// Writes a model as a bundle (tar) to `out`, which may be slow to accept it (a client).
    fn export(&self, model: ModelRef, out: Box<dyn std::io::Write + Send>) -> BoxFuture<'_, Result<(), ApiError>>;
}

/// [`ModelService`] over a [`Registry`]: each call runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct RegistryModels(Arc<Registry>);

impl RegistryModels {
    /// Serves `registry`.
    pub fn new(registry: Arc<Registry>) -> RegistryModels {
        RegistryModels(registry)
    }

    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, ApiError>>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    {
        let registry = self.0.clone();
        Box::pin(async move { Ok(tokio::task::spawn_blocking(move || f(&registry)).await??) })
    }
}

impl ModelService for RegistryModels {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelRecord>, ApiError>> {
        self.blocking(Registry::list)
    }

    fn show(&self, model: ModelRef) -> BoxFuture<'_, Result<ModelRecord, ApiError>> {
        self.blocking(move |r| r.show(&model))
    }

    fn import(
        &self,
        path: PathBuf,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> BoxFuture<'_, Result<ModelRecord, ApiError>> {
        self.blocking(move |r| r.import_path_with(&path, name, mode))
    }

    fn copy(&self, from: ModelRef, to: ModelRef) -> BoxFuture<'_, Result<ModelRecord, ApiError>> {
        self.blocking(move |r| r.copy(&from, &to))
    }

    fn remove(&self, model: ModelRef) -> BoxFuture<'_, Result<Vec<ModelRecord>, ApiError>> {
        self.blocking(move |r| r.remove(&model))
    }

    fn set_pinned(&self, model: ModelRef, pinned: bool) -> BoxFuture<'_, Result<Vec<ModelRecord>, ApiError>> {
        self.blocking(move |r| r.set_pinned(&model, pinned))
    }

    fn verify(&self, model: Option<ModelRef>) -> BoxFuture<'_, Result<Vec<VerifyReport>, ApiError>> {
        self.blocking(move |r| r.verify(model.as_ref()))
    }

    fn gc(&self) -> BoxFuture<'_, Result<GcReport, ApiError>> {
        self.blocking(Registry::gc)
    }

    fn export(&self, model: ModelRef, mut out: Box<dyn std::io::Write + Send>) -> BoxFuture<'_, Result<(), ApiError>> {
        self.blocking(move |r| r.export_bundle(&model, &mut out).map(drop))
    }
}
