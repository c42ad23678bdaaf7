//! Integers as JSON Schema counts them: `16` and `16.0` are the same integer (OpenAPI 3.1 uses
//! JSON Schema 2020-12, where a number with a zero fraction is an integer), and clients written
//! in languages without an integer type send the second form. Request fields typed as integers
//! read both; a fraction, a value out of range or a non-number is still refused with the field's
//! name in the error.

use serde::{Deserialize, Deserializer, de::Error as _};

/// The largest integer every `f64` below it represents exactly (2^53).
const EXACT_F64: f64 = 9_007_199_254_740_992.0;

/// Reads an optional integer written as `16` or `16.0`. Use with `#[serde(default,
/// deserialize_with = "crate::routes::lenient::opt_int")]`.
pub(crate) fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let out_of_range = || D::Error::custom(format!("integer {n} is out of range"));
    if let Some(u) = n.as_u64() {
        return T::try_from(u).map(Some).map_err(|_| out_of_range());
    }
    if let Some(i) = n.as_i64() {
        return T::try_from(i).map(Some).map_err(|_| out_of_range());
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() <= EXACT_F64 => {
            // Exact: |f| ≤ 2^53 and no fraction, so the cast loses nothing.
            #[allow(clippy::cast_possible_truncation)]
            let i = f as i64;
            T::try_from(i).map(Some).map_err(|_| out_of_range())
        }
        _ => Err(D::Error::custom(format!("expected an integer, found {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "super::opt_int")]
        n: Option<u32>,
        #[serde(default, deserialize_with = "super::opt_int")]
        seed: Option<i64>,
    }

    fn parse(json: &str) -> Result<Probe, String> {
        serde_json::from_str::<Probe>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_with_a_zero_fraction_are_integers() {
        let p = parse(r#"{"n": 16.0, "seed": -3.0}"#).unwrap();
        assert_eq!((p.n, p.seed), (Some(16), Some(-3)));
        let p = parse(r#"{"n": 7, "seed": 9223372036854775807}"#).unwrap();
        assert_eq!((p.n, p.seed), (Some(7), Some(i64::MAX)));
        let p = parse(r#"{"n": null}"#).unwrap();
        assert_eq!((p.n, p.seed), (None, None));
        let p = parse("{}").unwrap();
        assert_eq!(p.n, None);
    }

    #[test]
    fn fractions_out_of_range_and_non_numbers_are_refused() {
        assert!(parse(r#"{"n": 1.5}"#).unwrap_err().contains("expected an integer"));
        assert!(parse(r#"{"n": -1}"#).unwrap_err().contains("out of range"));
        assert!(parse(r#"{"n": 4294967296.0}"#).unwrap_err().contains("out of range"));
        assert!(parse(r#"{"n": 1e300}"#).unwrap_err().contains("expected an integer"));
        assert!(parse(r#"{"n": "3"}"#).is_err());
    }
}
