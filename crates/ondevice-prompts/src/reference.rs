//! Pack references: `name`, `name@1.2.0`, `name@^1.2` (any semver requirement) and
//! `name@label`, and how they resolve against published versions and labels.
//!
//! A bare `name` resolves to the `production` label when it is set, else to the highest
//! published version (pre-releases only when nothing else exists). `rollback` moves `production`.

use std::collections::BTreeMap;

use semver::{Version, VersionReq};

use crate::PromptError;
use crate::pack::{validate_label, validate_name};

/// The label a bare name resolves to.
pub const PRODUCTION: &str = "production";
/// The label every publish moves to the version it publishes.
pub const LATEST: &str = "latest";

/// Which version a reference asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `name`: the `production` label, else the highest version.
    Default,
    /// `name@1.2.0`.
    Exact(Version),
    /// `name@^1.2`, `name@~1.2.3`, `name@>=1, <2`.
    Req(VersionReq),
    /// `name@production`.
    Label(String),
}

/// A parsed pack reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRef {
    /// The pack.
    pub name: String,
    /// Which version.
    pub selector: Selector,
}

impl std::fmt::Display for PackRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Default => write!(f, "{}", self.name),
            Selector::Exact(v) => write!(f, "{}@{v}", self.name),
            Selector::Req(r) => write!(f, "{}@{r}", self.name),
            Selector::Label(l) => write!(f, "{}@{l}", self.name),
        }
    }
}

impl std::str::FromStr for PackRef {
    type Err = PromptError;

    fn from_str(s: &str) -> Result<PackRef, PromptError> {
        let bad = |reason: String| PromptError::InvalidReference { reference: s.chars().take(100).collect(), reason };
        if s.len() > 200 {
            return Err(bad("longer than 200 characters".into()));
        }
        let (name, sel) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v.trim())),
            None => (s, None),
        };
        validate_name(name).map_err(bad)?;
        let selector = match sel {
            None => Selector::Default,
            Some("") => {
                return Err(bad("nothing after '@': give a version, a requirement such as ^1.2, or a label".into()));
            }
            Some(v) => {
                if let Ok(exact) = Version::parse(v) {
                    Selector::Exact(exact)
                } else if v.as_bytes()[0].is_ascii_lowercase() {
                    validate_label(v).map_err(bad)?;
                    Selector::Label(v.to_owned())
                } else {
                    Selector::Req(
                        VersionReq::parse(v).map_err(|e| bad(format!("not a version, requirement or label: {e}")))?,
                    )
                }
            }
        };
        Ok(PackRef { name: name.to_owned(), selector })
    }
}

/// Picks the version `selector` names among `versions` with `labels` (label → version).
pub fn resolve(selector: &Selector, versions: &[Version], labels: &BTreeMap<String, Version>) -> Option<Version> {
    let highest = |pred: &dyn Fn(&Version) -> bool| versions.iter().filter(|v| pred(v)).max().cloned();
    match selector {
        Selector::Default => {
            labels.get(PRODUCTION).cloned().or_else(|| highest(&|v| v.pre.is_empty())).or_else(|| highest(&|_| true))
        }
        Selector::Exact(v) => versions.contains(v).then(|| v.clone()),
        Selector::Req(r) => highest(&|v| r.matches(v)),
        Selector::Label(l) => labels.get(l).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_and_resolves() {
        let versions = vec![v("1.0.0"), v("1.2.0"), v("1.3.1"), v("2.0.0-rc.1"), v("2.0.0")];
        let mut labels = BTreeMap::new();
        let r = |s: &str, labels: &BTreeMap<String, Version>| {
            let p: PackRef = s.parse().unwrap();
            resolve(&p.selector, &versions, labels).map(|x| x.to_string())
        };
        assert_eq!(r("sum", &labels).as_deref(), Some("2.0.0"));
        assert_eq!(r("sum@^1.2", &labels).as_deref(), Some("1.3.1"));
        assert_eq!(r("sum@~1.2.0", &labels).as_deref(), Some("1.2.0"));
        assert_eq!(r("sum@1.2.0", &labels).as_deref(), Some("1.2.0"));
        assert_eq!(r("sum@1.2.5", &labels), None);
        assert_eq!(r("sum@production", &labels), None);
        labels.insert(PRODUCTION.to_owned(), v("1.2.0"));
        assert_eq!(r("sum", &labels).as_deref(), Some("1.2.0"));
        assert_eq!(r("sum@production", &labels).as_deref(), Some("1.2.0"));
        for bad in ["", "Sum", "sum@", "sum@^x", "sum@Prod", "a/b", "sum@1.2.0@x"] {
            assert!(bad.parse::<PackRef>().is_err(), "{bad}");
        }
    }
}
