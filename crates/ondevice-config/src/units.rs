//! Value types shared by config sections: byte sizes such as `16MiB` and listen addresses.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written `"64MiB"`, `"1GiB"`, `"512M"`, `"100KB"` or a plain integer.
/// Single-letter and `iB` suffixes are binary (K = KiB = 1024); `KB`/`MB`/`GB`/`TB` are decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, schemars::JsonSchema)]
#[schemars(with = "SizeSchema")]
pub struct ByteSize(pub u64);

#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SizeSchema {
    /// Bytes.
    Bytes(u64),
    /// A size with a unit, e.g. "64MiB".
    Text(#[schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGTk]i?B?|B)?\s*$"))] String),
}

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: expected a number with an optional unit such as \"64MiB\", \"1GiB\", \"512M\"")]
pub struct ByteSizeError {
    input: String,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError { input: s.to_owned() };
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err());
        }
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "k" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        if unit.trim().is_empty() && num.contains('.') {
            return Err(err());
        }
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult).map(ByteSize).ok_or_else(err);
        }
        let f: f64 = num.parse().map_err(|_| err())?;
        let v = f * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(v.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, name) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{}", self.0 / size, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A socket address to listen on, written as `"IP:PORT"` (`"127.0.0.1:7733"`, `"[::1]:7733"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    /// Whether the address is a loopback address (only this machine can connect).
    pub fn is_loopback(&self) -> bool {
        self.0.ip().is_loopback()
    }
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr(SocketAddr::from(([127, 0, 0, 1], 7733)))
    }
}

/// Why a listen address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listen address {input:?}: expected IP:PORT such as \"127.0.0.1:7733\"")]
pub struct ListenAddrError {
    input: String,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix("localhost:").map_or_else(|| t.to_owned(), |p| format!("127.0.0.1:{p}"));
        t.parse::<SocketAddr>().map(ListenAddr).map_err(|_| ListenAddrError { input: s.to_owned() })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_units() {
        let cases = [
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("512M", 512 << 20),
            ("512MB", 512_000_000),
            ("4096", 4096),
            ("1.5KiB", 1536),
            (" 2 KiB ", 2048),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<ByteSize>().unwrap().bytes(), want, "{input}");
        }
        for bad in ["", "MiB", "-1", "12XB", "2 kib", "99999999999999999999TiB", "1e999"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn byte_sizes_display_round_trip() {
        for n in [0u64, 1, 1024, 64 << 20, (1 << 30) + 1, 3 << 40] {
            let shown = ByteSize(n).to_string();
            assert_eq!(shown.parse::<ByteSize>().unwrap(), ByteSize(n), "{shown}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert!("127.0.0.1:7733".parse::<ListenAddr>().unwrap().is_loopback());
        assert!("[::1]:1".parse::<ListenAddr>().unwrap().is_loopback());
        assert!("localhost:80".parse::<ListenAddr>().unwrap().is_loopback());
        assert!(!"0.0.0.0:7733".parse::<ListenAddr>().unwrap().is_loopback());
        assert!("example.com:80".parse::<ListenAddr>().is_err());
        assert!("127.0.0.1".parse::<ListenAddr>().is_err());
    }
}
