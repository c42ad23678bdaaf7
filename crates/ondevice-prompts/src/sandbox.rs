//! The hardened template environment prompt packs render in: `ondevice-template`'s [`Sandbox`],
//! the same environment (limits, run-time memory meter, capped builtins, no loader) the engine
//! renders models' chat templates in. Packs use its strict profile ([`Sandbox::new`]): undefined
//! variables are errors, the static [`guard`] refuses memory-growing constructs before compiling,
//! and `namespace` is not available.

pub use ondevice_template::{
    DEFAULT_FUEL, DEFAULT_MAX_BUILT, DEFAULT_MAX_OUTPUT, DEFAULT_MAX_TEMPLATE, DEFAULT_RECURSION_LIMIT, Limits,
    MAX_FACTOR, MAX_GROWTH, Sandbox, SandboxError, TokenEstimator, approx_tokens, guard,
};
