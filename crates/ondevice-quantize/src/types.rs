//! llama.cpp's file types (`enum llama_ftype`) by the names its `llama-quantize` uses, and which of
//! them need an importance matrix.

use std::fmt;

use ondevice_gguf::GgmlType;

use crate::error::QuantizeError;

macro_rules! quant_types {
    ($($(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $imatrix:literal;)*) => {
        /// A GGUF file type llama.cpp's quantizer produces.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum QuantType {
            $($(#[$doc])* $variant,)*
        }

        impl QuantType {
            /// Every type, in llama-quantize's order.
            pub const ALL: &'static [QuantType] = &[$(QuantType::$variant,)*];

            /// The `llama_ftype` value.
            pub fn ftype(self) -> u32 {
                match self { $(QuantType::$variant => $id,)* }
            }

            /// The name (`Q4_K_M`).
            pub fn name(self) -> &'static str {
                match self { $(QuantType::$variant => $name,)* }
            }

            /// Whether llama.cpp refuses (or gives poor results for) this type without an
            /// importance matrix.
            pub fn needs_imatrix(self) -> bool {
                match self { $(QuantType::$variant => $imatrix,)* }
            }
        }
    };
}

quant_types! {
    /// 32-bit float.
    F32 = 0, "F32", false;
    /// 16-bit float.
    F16 = 1, "F16", false;
    /// bfloat16.
    BF16 = 32, "BF16", false;
    /// 8-bit.
    Q8_0 = 7, "Q8_0", false;
    /// 4-bit, scale per block.
    Q4_0 = 2, "Q4_0", false;
    /// 4-bit, scale and minimum per block.
    Q4_1 = 3, "Q4_1", false;
    /// 5-bit.
    Q5_0 = 8, "Q5_0", false;
    /// 5-bit with minimum.
    Q5_1 = 9, "Q5_1", false;
    /// 2-bit k-quant.
    Q2_K = 10, "Q2_K", false;
    /// 2-bit k-quant, smaller.
    Q2_K_S = 21, "Q2_K_S", true;
    /// 3-bit k-quant, small.
    Q3_K_S = 11, "Q3_K_S", false;
    /// 3-bit k-quant, medium.
    Q3_K_M = 12, "Q3_K_M", false;
    /// 3-bit k-quant, large.
    Q3_K_L = 13, "Q3_K_L", false;
    /// 4-bit k-quant, small.
    Q4_K_S = 14, "Q4_K_S", false;
    /// 4-bit k-quant, medium.
    Q4_K_M = 15, "Q4_K_M", false;
    /// 5-bit k-quant, small.
    Q5_K_S = 16, "Q5_K_S", false;
    /// 5-bit k-quant, medium.
    Q5_K_M = 17, "Q5_K_M", false;
    /// 6-bit k-quant.
    Q6_K = 18, "Q6_K", false;
    /// 1.56 bits per weight.
    IQ1_S = 24, "IQ1_S", true;
    /// 1.75 bits per weight.
    IQ1_M = 31, "IQ1_M", true;
    /// 2.06 bits per weight.
    IQ2_XXS = 19, "IQ2_XXS", true;
    /// 2.31 bits per weight.
    IQ2_XS = 20, "IQ2_XS", true;
    /// 2.5 bits per weight.
    IQ2_S = 28, "IQ2_S", true;
    /// 2.7 bits per weight.
    IQ2_M = 29, "IQ2_M", false;
    /// 3.06 bits per weight.
    IQ3_XXS = 23, "IQ3_XXS", false;
    /// 3.3 bits per weight.
    IQ3_XS = 22, "IQ3_XS", false;
    /// 3.44 bits per weight.
    IQ3_S = 26, "IQ3_S", false;
    /// 3.66 bits per weight.
    IQ3_M = 27, "IQ3_M", false;
    /// 4.5 bits per weight, non-linear.
    IQ4_NL = 25, "IQ4_NL", false;
    /// 4.25 bits per weight, non-linear.
    IQ4_XS = 30, "IQ4_XS", false;
    /// 1.69 bits per weight ternary.
    TQ1_0 = 36, "TQ1_0", false;
    /// 2.06 bits per weight ternary.
    TQ2_0 = 37, "TQ2_0", false;
}

impl QuantType {
    /// The type with this name, case-insensitive (`q4_k_m`); `Q3_K`, `Q4_K` and `Q5_K` are the
    /// medium variants, as in llama-quantize.
    pub fn from_name(name: &str) -> Result<Self, QuantizeError> {
        let upper = name.to_ascii_uppercase();
        let alias = match upper.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        Self::ALL.iter().copied().find(|t| t.name() == alias).ok_or_else(|| QuantizeError::UnknownType {
            name: name.to_owned(),
            known: Self::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The converter's output type for this file type, when the converter alone can make it.
    pub fn converter_type(self) -> Option<crate::OutType> {
        match self {
            QuantType::F32 => Some(crate::OutType::F32),
            QuantType::F16 => Some(crate::OutType::F16),
            QuantType::BF16 => Some(crate::OutType::BF16),
            QuantType::Q8_0 => Some(crate::OutType::Q8_0),
            _ => None,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A ggml tensor type by name, for per-tensor overrides and output/embedding types.
pub fn ggml_type_from_name(name: &str) -> Result<GgmlType, QuantizeError> {
    GgmlType::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
        QuantizeError::UnknownType {
            name: name.to_owned(),
            known: GgmlType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_resolve() {
        for &t in QuantType::ALL {
            assert_eq!(QuantType::from_name(t.name()).unwrap(), t);
            assert_eq!(QuantType::from_name(&t.name().to_lowercase()).unwrap(), t);
        }
        assert_eq!(QuantType::from_name("q4_k").unwrap(), QuantType::Q4_K_M);
        let err = QuantType::from_name("Q9_Z").unwrap_err().to_string();
        assert!(err.contains("Q9_Z") && err.contains("Q4_K_M"), "{err}");
    }

    #[test]
    fn file_type_names_agree_with_the_gguf_reader() {
        for &t in QuantType::ALL {
            assert_eq!(ondevice_gguf::file_type_name(t.ftype()), Some(t.name()), "{t}");
        }
    }
}
