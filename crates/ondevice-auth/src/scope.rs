//! Scopes a key can hold and the rule for whether a key's scopes satisfy a requirement.

use std::fmt;
use std::str::FromStr;

/// What a key may do. `admin` implies every scope; every scope implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Everything, including key management and daemon control.
    Admin,
    /// Registry writes: pull, import, remove models.
    Models,
    /// Generation and embeddings.
    Infer,
    /// Status, metrics, listings.
    Read,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Models, Scope::Infer, Scope::Read];

    /// The scope's name on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Models => "models",
            Scope::Infer => "infer",
            Scope::Read => "read",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Admin => 1,
            Scope::Models => 2,
            Scope::Infer => 4,
            Scope::Read => 8,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of `admin`, `models`, `infer`, `read`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected one of admin, models, infer, read")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s.trim()).ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// A set of scopes held by a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope.
    pub const NONE: Scopes = Scopes(0);

    /// The set holding only `admin`.
    pub fn admin() -> Scopes {
        Scopes(Scope::Admin.bit())
    }

    /// Whether the set explicitly holds `scope`.
    pub fn holds(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether a key with these scopes may do what `required` guards.
    pub fn satisfies(self, required: Scope) -> bool {
        self.holds(Scope::Admin) || self.holds(required) || (required == Scope::Read && self.0 != 0)
    }

    /// Adds a scope.
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    /// The scopes held, in display order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.holds(*s))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Comma-separated names (the database form).
    pub fn to_list(self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(",")
    }

    /// Parses a comma-separated list.
    pub fn from_list(s: &str) -> Result<Scopes, UnknownScope> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut s = Scopes::NONE;
        for sc in iter {
            s.insert(sc);
        }
        s
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({})", self.to_list())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfaction_rules() {
        let table = [
            ("admin", [true, true, true, true]),
            ("models", [false, true, false, true]),
            ("infer", [false, false, true, true]),
            ("read", [false, false, false, true]),
            ("", [false, false, false, false]),
            ("models,infer", [false, true, true, true]),
        ];
        for (held, want) in table {
            let s = Scopes::from_list(held).unwrap();
            for (req, w) in Scope::ALL.into_iter().zip(want) {
                assert_eq!(s.satisfies(req), w, "{held} satisfies {req}");
            }
        }
    }

    #[test]
    fn lists_round_trip_and_reject_unknown() {
        let s = Scopes::from_list("read, infer").unwrap();
        assert_eq!(s.to_list(), "infer,read");
        assert_eq!(Scopes::from_list(&s.to_list()).unwrap(), s);
        assert_eq!(Scopes::from_list("read,root").unwrap_err(), UnknownScope("root".into()));
    }
}
