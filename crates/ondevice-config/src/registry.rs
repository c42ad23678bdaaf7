//! `[registry]`: model pulls — which private hosts may be downloaded from, the disk quota, the
//! download queue and connections, extra catalogs, and per-host credentials (secret references).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;
use crate::units::ByteSize;

/// Environment variable adding hosts to `registry.allow_hosts` (comma-separated).
pub const ENV_REGISTRY_ALLOW_HOSTS: &str = "ONDEVICE_REGISTRY_ALLOW_HOSTS";

/// `[registry]`: the model registry's downloads.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Hosts (names or IP literals) that pulls may reach although they resolve to loopback,
    /// private or link-local addresses, such as `["127.0.0.1", "models.lan"]`. Everything else on
    /// such addresses is refused, after DNS resolution and on every redirect. Extended by
    /// `ONDEVICE_REGISTRY_ALLOW_HOSTS=127.0.0.1,...`.
    pub allow_hosts: Vec<String>,
    /// Most disk space the model blobs (plus downloads in progress) may take, e.g. `"50GiB"`;
    /// unset: only the free space on the disk limits pulls.
    pub quota: Option<ByteSize>,
    /// When a pull does not fit, remove least recently used models that are not pinned.
    pub evict: bool,
    /// Disk space always left free by pulls.
    pub min_free: ByteSize,
    /// Pulls downloading at once (the job queue's `downloads` class); more wait queued.
    pub max_concurrent_jobs: u32,
    /// Connections per file when the server supports ranges.
    pub connections: u32,
    /// Size of the ranges each connection fetches. Progress inside a chunk is recorded as it is
    /// written, so a resumed pull fetches again about 1-2 MiB per connection, not whole chunks.
    pub chunk_size: ByteSize,
    /// Attempts per chunk on one source before trying the next mirror.
    pub retries: u32,
    /// Largest file a pull accepts.
    pub max_download_size: ByteSize,
    /// Catalogs after the bundled one: TOML files or `https://` URLs; later ones override
    /// entries with the same name.
    pub catalogs: Vec<String>,
    /// Credentials per host, such as `[registry.credentials."huggingface.co"] token = "env:HF_TOKEN"`.
    /// Sent only to that exact host (never across a redirect to another host).
    pub credentials: BTreeMap<String, CredentialConfig>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            allow_hosts: Vec::new(),
            quota: None,
            evict: false,
            min_free: ByteSize::mib(512),
            max_concurrent_jobs: 2,
            connections: 4,
            chunk_size: ByteSize::mib(16),
            retries: 4,
            max_download_size: ByteSize::mib(256 * 1024),
            catalogs: Vec::new(),
            credentials: BTreeMap::new(),
        }
    }
}

/// `[registry.credentials."HOST"]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Bearer token: `"env:NAME"` or `"file:/path"`, never a literal.
    pub token: SecretRef,
}

impl RegistrySettings {
    /// Adds the hosts of `ONDEVICE_REGISTRY_ALLOW_HOSTS`.
    pub fn apply_env_allow_hosts(&mut self, value: &str) {
        for h in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            if !self.allow_hosts.iter().any(|x| x.eq_ignore_ascii_case(h)) {
                self.allow_hosts.push(h.to_owned());
            }
        }
    }

    /// Checks values that single fields cannot express; errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (i, h) in self.allow_hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !ok {
                return Err((
                    "registry.allow_hosts",
                    format!(
                        "entry {i} {h:?} is not a host: write a name or IP such as \"127.0.0.1\", without scheme or port"
                    ),
                ));
            }
        }
        for (key, v, min) in [
            ("registry.max_concurrent_jobs", self.max_concurrent_jobs, 1),
            ("registry.connections", self.connections, 1),
        ] {
            if v < min {
                return Err((key, format!("must be at least {min}")));
            }
        }
        if self.connections > 64 {
            return Err(("registry.connections", "must be at most 64".to_owned()));
        }
        if self.chunk_size.bytes() < 64 * 1024 {
            return Err(("registry.chunk_size", "must be at least 64KiB".to_owned()));
        }
        for c in &self.catalogs {
            let url = c.starts_with("http://") || c.starts_with("https://");
            if c.is_empty() || (c.contains("://") && !url) {
                return Err(("registry.catalogs", format!("{c:?} is not a file path or an http(s) URL")));
            }
        }
        for host in self.credentials.keys() {
            if host.is_empty() || host.contains(['/', ':', '@']) {
                return Err((
                    "registry.credentials",
                    format!("{host:?} is not a host name: write it without scheme or port"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Environment, Overrides, load};

    fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<crate::Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, toml).unwrap();
        let mut vars = vec![("ONDEVICE_CONFIG", file.to_str().unwrap()), ("ONDEVICE_HOME", "/tmp/h")];
        vars.extend_from_slice(env);
        load(&Environment::from_pairs(vars), &Overrides::default()).map(|r| r.settings).map_err(|e| e.to_string())
    }

    #[test]
    fn registry_section_env_and_refusals() {
        let s = load_with(
            "[registry]\nallow_hosts = [\"models.lan\"]\nquota = \"10GiB\"\nchunk_size = \"1MiB\"\n\n[registry.credentials.\"huggingface.co\"]\ntoken = \"env:HF_TOKEN\"\n",
            &[("ONDEVICE_REGISTRY_ALLOW_HOSTS", "127.0.0.1, ::1,models.lan")],
        )
        .unwrap();
        assert_eq!(s.registry.allow_hosts, ["models.lan", "127.0.0.1", "::1"]);
        assert_eq!(s.registry.quota.map(|q| q.bytes()), Some(10 << 30));
        assert_eq!(s.registry.chunk_size.bytes(), 1 << 20);
        assert!(s.registry.credentials.contains_key("huggingface.co"));
        for (toml, what) in [
            ("[registry]\nallow_hosts = [\"http://x/\"]\n", "registry.allow_hosts"),
            ("[registry]\nconnections = 0\n", "registry.connections"),
            ("[registry]\nchunk_size = \"1KiB\"\n", "registry.chunk_size"),
            ("[registry]\ncatalogs = [\"ftp://x/c.toml\"]\n", "registry.catalogs"),
            ("[registry.credentials.\"h\"]\ntoken = \"hf_literal\"\n", "references"),
        ] {
            let err = load_with(toml, &[]).unwrap_err();
            assert!(err.contains(what), "{toml}: {err}");
        }
    }
}
