//! The read-only views of diagnostics the edge serves to admins: the doctor's checks as the
//! running daemon sees itself, and telemetry's status and preview. The binary implements
//! [`InspectService`] (its CPU, sandbox, registry and runtime checks live there) and the CLI
//! prints the very same values (`ondevice diag doctor --json`, `ondevice telemetry status|preview
//! --json`). Enabling or disabling telemetry is deliberately not part of it: consent is given at
//! the machine, with the CLI.

use ondevice_jobs::BoxFuture;

use crate::DiagError;
use crate::doctor::Check;
use crate::telemetry::{Preview, Status};

/// What the edge needs for `/api/v1/diagnostics/doctor` and `/api/v1/telemetry[/preview]`.
pub trait InspectService: Send + Sync {
    /// The doctor's checks, computed by the daemon about itself.
    fn doctor(&self) -> BoxFuture<'_, Result<Vec<Check>, DiagError>>;
    /// Telemetry's state, consent and endpoint.
    fn telemetry_status(&self) -> BoxFuture<'_, Result<Status, DiagError>>;
    /// The queued events and the next report, exactly as they would be sent.
    fn telemetry_preview(&self) -> BoxFuture<'_, Result<Preview, DiagError>>;
}
