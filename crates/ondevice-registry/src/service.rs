//! The model registry as the edge uses it: [`ModelService`], the object-safe contract the server
//! holds as `Arc<dyn ModelService>`, and [`RegistryModels`], its implementation over a [`Registry`]
//! that runs every call on the blocking pool. The server maps [`RegistryError`] to HTTP statuses
//! and gRPC codes in one place; nothing in the edge names [`Registry`] itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ondevice_jobs::BoxFuture;

use crate::metrics::{self, Op};
use crate::{GcReport, ImportMode, ModelRecord, ModelRef, Registry, RegistryError, VerifyReport};

/// The local model registry as the edge uses it: the native models routes, the gRPC
/// `ModelsService` and the catalog's "already present" marks. Implementations keep blocking work
/// (hashing, copying, SQLite) off the async runtime.
pub trait ModelService: Send + Sync {
    /// Every registered model.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelRecord>, RegistryError>>;
    /// One model, by `name:tag` or digest.
    fn show(&self, model: ModelRef) -> BoxFuture<'_, Result<ModelRecord, RegistryError>>;
    /// Imports a file, Hugging Face directory or bundle from the daemon's filesystem as `name`
    /// (default: from the file), copied (or cloned) or hard-linked as `mode` says.
    fn import(
        &self,
        path: PathBuf,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> BoxFuture<'_, Result<ModelRecord, RegistryError>>;
    /// Registers the model `from` names under `to` as well (same blobs; Ollama's `copy`).
    fn copy(&self, from: ModelRef, to: ModelRef) -> BoxFuture<'_, Result<ModelRecord, RegistryError>>;
    /// Removes the models a reference names; returns them.
    fn remove(&self, model: ModelRef) -> BoxFuture<'_, Result<Vec<ModelRecord>, RegistryError>>;
    /// Pins or unpins the models a reference names; returns them as they are now.
    fn set_pinned(&self, model: ModelRef, pinned: bool) -> BoxFuture<'_, Result<Vec<ModelRecord>, RegistryError>>;
    /// Re-hashes the blobs of one model, or of every model.
    fn verify(&self, model: Option<ModelRef>) -> BoxFuture<'_, Result<Vec<VerifyReport>, RegistryError>>;
    /// Deletes blobs nothing references and stale partial files.
    fn gc(&self) -> BoxFuture<'_, Result<GcReport, RegistryError>>;
    /// Writes a model as a bundle (tar) to `out`, which may be slow to accept it (a client).
    fn export(&self, model: ModelRef, out: Box<dyn std::io::Write + Send>) -> BoxFuture<'_, Result<(), RegistryError>>;
}

/// [`ModelService`] over a [`Registry`]: each call runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct RegistryModels(Arc<Registry>);

impl RegistryModels {
    /// Serves `registry`.
    pub fn new(registry: Arc<Registry>) -> RegistryModels {
        RegistryModels(registry)
    }

    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, RegistryError>>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    {
        let registry = self.0.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || f(&registry)).await {
                Ok(result) => result,
                // A panic on the blocking pool is a bug: let it reach the caller as one.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        })
    }

    /// [`Self::blocking`], counted in [`metrics`] as `op`.
    fn counted<T, F>(&self, op: Op, f: F) -> BoxFuture<'static, Result<T, RegistryError>>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    {
        let started = Instant::now();
        let work = self.blocking(f);
        Box::pin(async move {
            let result = work.await;
            metrics::record(op, result.is_ok(), started.elapsed());
            result
        })
    }
}

impl ModelService for RegistryModels {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelRecord>, RegistryError>> {
        self.blocking(Registry::list)
    }

    fn show(&self, model: ModelRef) -> BoxFuture<'_, Result<ModelRecord, RegistryError>> {
        self.blocking(move |r| r.show(&model))
    }

    fn import(
        &self,
        path: PathBuf,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> BoxFuture<'_, Result<ModelRecord, RegistryError>> {
        self.counted(Op::Import, move |r| r.import_path_with(&path, name, mode))
    }

    fn copy(&self, from: ModelRef, to: ModelRef) -> BoxFuture<'_, Result<ModelRecord, RegistryError>> {
        self.counted(Op::Copy, move |r| r.copy(&from, &to))
    }

    fn remove(&self, model: ModelRef) -> BoxFuture<'_, Result<Vec<ModelRecord>, RegistryError>> {
        self.counted(Op::Remove, move |r| r.remove(&model))
    }

    fn set_pinned(&self, model: ModelRef, pinned: bool) -> BoxFuture<'_, Result<Vec<ModelRecord>, RegistryError>> {
        self.counted(Op::Pin, move |r| r.set_pinned(&model, pinned))
    }

    fn verify(&self, model: Option<ModelRef>) -> BoxFuture<'_, Result<Vec<VerifyReport>, RegistryError>> {
        self.counted(Op::Verify, move |r| r.verify(model.as_ref()))
    }

    fn gc(&self) -> BoxFuture<'_, Result<GcReport, RegistryError>> {
        self.counted(Op::Gc, Registry::gc)
    }

    fn export(
        &self,
        model: ModelRef,
        mut out: Box<dyn std::io::Write + Send>,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        self.counted(Op::Export, move |r| r.export_bundle(&model, &mut out).map(drop))
    }
}
