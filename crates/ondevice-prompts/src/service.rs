//! The prompt library as the daemon's edge uses it: [`PromptService`], the object-safe contract
//! the server holds as `Arc<dyn PromptService>` (HTTP `/api/v1/prompts`, gRPC `PromptService`,
//! packs named by generation requests), and [`Prompts`], its implementation over a [`Library`]
//! and the daemon's [`Inference`] (tokenizer and embeddings for budgets). Blocking work (SQLite,
//! blob files, rendering) runs on the blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;

use ondevice_runtime::{BoxFuture, Inference};
use ondevice_store::PromptLabelMove;
use serde::Serialize;

use crate::PromptError;
use crate::archive::{self, VerifyingKey};
use crate::compress::{
    ApproxCounter, Budget, CompressReport, Embedder, InferenceCounter, InferenceEmbedder, TokenCounter,
};
use crate::library::{Library, PackSummary, Published, VersionInfo};
use crate::pack::Pack;
use crate::reference::PackRef;
use crate::render::{Message, TestOutcome, resolve_variables, run_tests};

/// A render: which pack, its variables, and optionally the model whose tokenizer counts and the
/// budget to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderRequest {
    /// The pack reference.
    pub reference: PackRef,
    /// Variables.
    pub variables: BTreeMap<String, serde_json::Value>,
    /// The model whose tokenizer counts tokens (otherwise an estimate of four characters a token).
    pub model: Option<String>,
    /// Most prompt tokens (default: the manifest's `[budget] tokens`, else no limit).
    pub budget: Option<usize>,
    /// The embedding model for `extractive` compression (default: the manifest's
    /// `[model] embedding`, else lexical ranking only).
    pub embedding_model: Option<String>,
}

/// A rendered pack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenderResult {
    /// The pack.
    pub name: String,
    /// The version rendered.
    pub version: String,
    /// Its content digest.
    pub digest: String,
    /// The messages.
    pub messages: Vec<Message>,
    /// Prompt tokens (the whole conversation with its framing).
    pub tokens: usize,
    /// `model:NAME` when counted by a model's tokenizer, `estimate` otherwise.
    pub tokenizer: String,
    /// What fitting the budget did, when a budget applied.
    pub compression: Option<CompressReport>,
}

/// One pack version in full: its record, every version of the pack, label moves and files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackDetail {
    /// The version resolved.
    pub version: VersionInfo,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
    /// Label moves, oldest first.
    pub history: Vec<LabelMove>,
    /// The manifest.
    pub manifest: crate::pack::Manifest,
    /// Files, path → text.
    pub files: BTreeMap<String, String>,
}

/// One label move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelMove {
    /// Label.
    pub label: String,
    /// New version (`None`: removed).
    pub version: Option<String>,
    /// Previous version.
    pub previous: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

impl From<PromptLabelMove> for LabelMove {
    fn from(m: PromptLabelMove) -> Self {
        LabelMove { label: m.label, version: m.version, previous: m.previous, at: m.at }
    }
}

/// The contract the edge holds.
pub trait PromptService: Send + Sync {
    /// Every pack.
    fn list(&self) -> BoxFuture<'_, Result<Vec<PackSummary>, PromptError>>;
    /// One version with its history and files.
    fn show(&self, reference: PackRef) -> BoxFuture<'_, Result<PackDetail, PromptError>>;
    /// Renders (and fits a budget).
    fn render(&self, request: RenderRequest) -> BoxFuture<'_, Result<RenderResult, PromptError>>;
    /// Publishes a pack from its files; `labels` empty: the manifest's, else `production`.
    fn publish(
        &self,
        files: BTreeMap<String, String>,
        labels: Vec<String>,
    ) -> BoxFuture<'_, Result<Published, PromptError>>;
    /// Moves `production` to `version`; returns the version now served and the one before.
    fn rollback(
        &self,
        name: String,
        version: String,
    ) -> BoxFuture<'_, Result<(VersionInfo, Option<String>), PromptError>>;
    /// Deletes one version.
    fn delete(&self, name: String, version: String) -> BoxFuture<'_, Result<VersionInfo, PromptError>>;
    /// Unified diff between two versions.
    fn diff(&self, a: PackRef, b: PackRef) -> BoxFuture<'_, Result<String, PromptError>>;
    /// An unsigned archive of one version (sign it client-side with [`archive::export`]).
    fn export(&self, reference: PackRef) -> BoxFuture<'_, Result<Vec<u8>, PromptError>>;
    /// Imports an archive (signature checked; with `trusted`, only those signers) and publishes it.
    fn import(&self, archive: Vec<u8>, trusted: Vec<VerifyingKey>) -> BoxFuture<'_, Result<Published, PromptError>>;
    /// Runs a version's tests.
    fn test(&self, reference: PackRef) -> BoxFuture<'_, Result<Vec<TestOutcome>, PromptError>>;
}

/// [`PromptService`] over a [`Library`] and, for token counts by a model, the daemon's inference.
#[derive(Clone)]
pub struct Prompts {
    library: Arc<Library>,
    inference: Option<Arc<dyn Inference>>,
}

impl std::fmt::Debug for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompts").field("library", &self.library).finish_non_exhaustive()
    }
}

impl Prompts {
    /// The service; without `inference`, renders naming a model fail with a clear error.
    pub fn new(library: Arc<Library>, inference: Option<Arc<dyn Inference>>) -> Prompts {
        Prompts { library, inference }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Library) -> Result<T, PromptError> + Send + 'static,
    ) -> Result<T, PromptError> {
        let lib = self.library.clone();
        tokio::task::spawn_blocking(move || f(&lib))
            .await
            .unwrap_or_else(|e| Err(PromptError::Unavailable(format!("the prompt library task failed: {e}"))))
    }

    /// Renders a pack that is already loaded (also used for packs not yet published).
    pub async fn render_pack(
        &self,
        pack: &Pack,
        digest: String,
        request: &RenderRequest,
    ) -> Result<RenderResult, PromptError> {
        render_pack(self.library.sandbox(), self.inference.clone(), pack, digest, request).await
    }
}

/// Renders `pack` (published or not) in `sandbox`; with a model or an embedding model named, the
/// counts and embeddings go through `inference`.
pub async fn render_pack(
    sandbox: &crate::sandbox::Sandbox,
    inference: Option<Arc<dyn Inference>>,
    pack: &Pack,
    digest: String,
    request: &RenderRequest,
) -> Result<RenderResult, PromptError> {
    let ctx = resolve_variables(pack, &request.variables)?;
    let counter: Box<dyn TokenCounter> = match (&request.model, &inference) {
        (Some(m), Some(inf)) => Box::new(InferenceCounter::new(inf.clone(), m.clone())),
        (Some(m), None) => {
            return Err(PromptError::Unavailable(format!(
                "counting tokens for model {m} needs the daemon's inference service, which is not running"
            )));
        }
        (None, _) => Box::new(ApproxCounter),
    };
    let tokenizer = request.model.as_ref().map_or_else(|| "estimate".to_owned(), |m| format!("model:{m}"));
    let embedding =
        request.embedding_model.clone().or_else(|| pack.manifest().model.as_ref().and_then(|h| h.embedding.clone()));
    let embedder: Option<Box<dyn Embedder>> = match (embedding, &inference) {
        (Some(m), Some(inf)) => Some(Box::new(InferenceEmbedder::new(inf.clone(), m))),
        _ => None,
    };
    let budget = request.budget.or_else(|| pack.manifest().budget.as_ref().map(|b| b.tokens));
    match budget {
        Some(tokens) => {
            let (r, report) =
                crate::compress::fit(sandbox, pack, ctx, Budget { tokens }, counter.as_ref(), embedder.as_deref())
                    .await?;
            Ok(RenderResult {
                name: r.name,
                version: r.version,
                digest,
                messages: r.messages,
                tokens: report.tokens_after,
                tokenizer,
                compression: Some(report),
            })
        }
        None => {
            let r = crate::render::render_with(sandbox, pack, &ctx)?;
            let tokens = counter.count(&r.messages).await?;
            Ok(RenderResult {
                name: r.name,
                version: r.version,
                digest,
                messages: r.messages,
                tokens,
                tokenizer,
                compression: None,
            })
        }
    }
}

impl PromptService for Prompts {
    fn list(&self) -> BoxFuture<'_, Result<Vec<PackSummary>, PromptError>> {
        Box::pin(self.blocking(|l| l.list()))
    }

    fn show(&self, reference: PackRef) -> BoxFuture<'_, Result<PackDetail, PromptError>> {
        Box::pin(self.blocking(move |l| {
            let (pack, info) = l.load(&reference)?;
            let versions = l.versions(&reference.name)?;
            let history = l.history(&reference.name)?.into_iter().map(LabelMove::from).collect();
            Ok(PackDetail {
                version: info,
                versions,
                history,
                manifest: pack.manifest().clone(),
                files: pack.files().clone(),
            })
        }))
    }

    fn render(&self, request: RenderRequest) -> BoxFuture<'_, Result<RenderResult, PromptError>> {
        Box::pin(async move {
            let reference = request.reference.clone();
            let (pack, info) = self.blocking(move |l| l.load(&reference)).await?;
            self.render_pack(&pack, info.digest, &request).await
        })
    }

    fn publish(
        &self,
        files: BTreeMap<String, String>,
        labels: Vec<String>,
    ) -> BoxFuture<'_, Result<Published, PromptError>> {
        Box::pin(self.blocking(move |l| {
            let pack = Pack::from_files(files)?;
            l.publish(&pack, &labels, None)
        }))
    }

    fn rollback(
        &self,
        name: String,
        version: String,
    ) -> BoxFuture<'_, Result<(VersionInfo, Option<String>), PromptError>> {
        Box::pin(self.blocking(move |l| {
            let previous = l.rollback(&name, &version)?;
            let now = l.resolve(&PackRef { name, selector: crate::reference::Selector::Default })?;
            Ok((now, previous))
        }))
    }

    fn delete(&self, name: String, version: String) -> BoxFuture<'_, Result<VersionInfo, PromptError>> {
        Box::pin(self.blocking(move |l| l.delete(&name, &version)))
    }

    fn diff(&self, a: PackRef, b: PackRef) -> BoxFuture<'_, Result<String, PromptError>> {
        Box::pin(self.blocking(move |l| {
            let (pa, _) = l.load(&a)?;
            let (pb, _) = l.load(&b)?;
            Ok(crate::diff::diff(&pa, &pb))
        }))
    }

    fn export(&self, reference: PackRef) -> BoxFuture<'_, Result<Vec<u8>, PromptError>> {
        Box::pin(self.blocking(move |l| {
            let (pack, _) = l.load(&reference)?;
            Ok(archive::export(&pack, None))
        }))
    }

    fn import(&self, bytes: Vec<u8>, trusted: Vec<VerifyingKey>) -> BoxFuture<'_, Result<Published, PromptError>> {
        Box::pin(self.blocking(move |l| {
            let a = archive::import(&bytes, &trusted)?;
            // An imported version keeps the labels its publisher gave it in pack.toml, else none
            // but `latest`: importing never changes what a bare name serves unless asked.
            let labels = a.pack.manifest().labels.clone();
            l.publish_imported(&a.pack, &labels, a.signer.as_ref())
        }))
    }

    fn test(&self, reference: PackRef) -> BoxFuture<'_, Result<Vec<TestOutcome>, PromptError>> {
        Box::pin(self.blocking(move |l| {
            let (pack, _) = l.load(&reference)?;
            Ok(run_tests(l.sandbox(), &pack))
        }))
    }
}
