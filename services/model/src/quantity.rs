//! [`Bytes`]: a size in bytes that people can write the way they think of it ("2GiB").

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::ValidationError;

/// A size in bytes.
///
/// Deserialises from a JSON number (bytes) or a string: a whole or decimal number with an
/// optional binary unit, `512MiB`, `2 GiB`, `512M`, `1G`, `1.5G`, `1073741824`. `K`, `M`, `G`,
/// `T`, `P`, their `Ki`/`KiB` forms and `B` are accepted in any case; all units are powers of
/// 1024, as in QEMU and Proxmox. `MB`/`GB` are refused as ambiguous (some tools mean 1000,
/// others 1024) with a hint. The value must come to a whole number of bytes.
///
/// Serialises as a JSON integer of bytes, so stored and returned values are exact and
/// comparable. [`Display`](fmt::Display) is for people: `2 GiB`, `1.5 GiB`, `1000 B`.
///
/// Zero is a valid `Bytes`; fields where zero makes no sense (a disk size, memory) refuse it
/// in their `validate()` with the field's path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(u64);

const UNITS: [(&str, u64); 5] = [
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// What every size error ends with: the forms that are accepted.
const ACCEPTED: &str = "write a whole number of bytes (1073741824) or a number with a binary unit \
                        (512MiB, 2GiB, 512M, 1G, 1.5G; K, M, G, T, P mean powers of 1024)";

impl Bytes {
    /// One kibibyte.
    pub const KIB: u64 = 1 << 10;
    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;
    /// One gibibyte.
    pub const GIB: u64 = 1 << 30;
    /// One tebibyte.
    pub const TIB: u64 = 1 << 40;

    /// `n` bytes.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// `n` mebibytes (saturating at `u64::MAX` bytes).
    pub const fn from_mib(n: u64) -> Self {
        Self(n.saturating_mul(Self::MIB))
    }

    /// `n` gibibytes (saturating at `u64::MAX` bytes).
    pub const fn from_gib(n: u64) -> Self {
        Self(n.saturating_mul(Self::GIB))
    }

    /// The size in bytes.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The size in whole mebibytes, rounded down.
    pub const fn mib(self) -> u64 {
        self.0 / Self::MIB
    }

    /// Whether the size is a whole multiple of `unit` bytes (`unit` > 0).
    pub const fn is_multiple_of(self, unit: u64) -> bool {
        matches!(self.0.checked_rem(unit), Some(0))
    }

    fn invalid(input: &str, why: &str) -> ValidationError {
        ValidationError::new("", format!("{input:?} is not a size: {why}; {ACCEPTED}"))
    }
}

impl From<u64> for Bytes {
    fn from(n: u64) -> Self {
        Self(n)
    }
}

impl From<Bytes> for u64 {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

fn unit_factor(unit: &str) -> Result<u64, &'static str> {
    let lower = unit.to_ascii_lowercase();
    let factor = match lower.as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "p" | "pi" | "pib" => 1 << 50,
        "kb" | "mb" | "gb" | "tb" | "pb" => {
            return Err("units like MB and GB are ambiguous (1000 or 1024?); use MiB/GiB or M/G, which mean powers of 1024")
        }
        _ => return Err("the unit is not known"),
    };
    Ok(factor)
}

impl FromStr for Bytes {
    type Err = ValidationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(Self::invalid(input, "it is empty"));
        }
        if s.starts_with('-') {
            return Err(Self::invalid(input, "a size cannot be negative"));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() {
            return Err(Self::invalid(input, "it does not start with a number"));
        }
        let factor = unit_factor(unit.trim_start()).map_err(|why| Self::invalid(input, why))?;
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
            return Err(Self::invalid(input, "the number is malformed"));
        }
        let too_large = || Self::invalid(input, "it is larger than 16 EiB");
        let whole: u128 = whole.parse().map_err(|_| too_large())?;
        let mut total = whole
            .checked_mul(u128::from(factor))
            .ok_or_else(too_large)?;
        if !frac.is_empty() {
            // Exact decimal arithmetic: 1.5G is exactly 1610612736 bytes; 0.3B is refused.
            if frac.len() > 18 {
                return Err(Self::invalid(input, "too many decimal places"));
            }
            let digits: u128 = frac
                .parse()
                .map_err(|_| Self::invalid(input, "the number is malformed"))?;
            let scale = 10u128.pow(frac.len() as u32);
            let scaled = digits * u128::from(factor);
            if scaled.checked_rem(scale) != Some(0) {
                return Err(Self::invalid(input, "it is not a whole number of bytes"));
            }
            total = total.checked_add(scaled / scale).ok_or_else(too_large)?;
        }
        u64::try_from(total).map(Self).map_err(|_| too_large())
    }
}

impl fmt::Display for Bytes {
    /// The largest binary unit not above the value, with up to two decimals (rounded down):
    /// `2 GiB`, `1.5 GiB`, `100 MiB`, `1000 B`. Exact sizes parse back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, unit) in UNITS {
            if self.0 >= unit {
                let whole = self.0 / unit;
                let hundredths = (u128::from(self.0 % unit) * 100 / u128::from(unit)) as u64;
                return match hundredths {
                    0 => write!(f, "{whole} {name}"),
                    h if h % 10 == 0 => write!(f, "{whole}.{} {name}", h / 10),
                    h => write!(f, "{whole}.{h:02} {name}"),
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = Bytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string like \"2GiB\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v).map(Bytes).map_err(|_| {
                    E::custom(format!(
                        "{v} is not a size: a size cannot be negative; {ACCEPTED}"
                    ))
                })
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bytes, E> {
                // JSON numbers are bytes; 1.5 bytes or 1e30 bytes are not sizes.
                if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_992.0 {
                    Ok(Bytes(v as u64))
                } else {
                    Err(E::custom(format!(
                        "{v} is not a size: a number must be a whole number of bytes; {ACCEPTED}"
                    )))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                v.parse().map_err(|e: ValidationError| E::custom(e.message))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl utoipa::PartialSchema for Bytes {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .description(Some("Bytes")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(
                        r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGTPkmgtp]([Ii][Bb]?)?|[Bb])?\s*$",
                    ))
                    .description(Some(
                        "A number with a binary unit: 512MiB, 2GiB, 512M, 1G (powers of 1024)",
                    )),
            )
            .description(Some(
                "A size. Accepted as bytes (a number) or a string with a binary unit; always \
                 returned as a number of bytes.",
            ))
            .examples([serde_json::json!("2GiB"), serde_json::json!(268435456)])
            .into()
    }
}

impl utoipa::ToSchema for Bytes {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, String> {
        s.parse::<Bytes>().map(Bytes::get).map_err(|e| e.message)
    }

    #[test]
    fn accepts_human_sizes() {
        for (input, bytes) in [
            ("256MiB", 256 << 20),
            ("2GiB", 2 << 30),
            ("512M", 512 << 20),
            ("1G", 1 << 30),
            ("1073741824", 1 << 30),
            ("2 GiB", 2 << 30),
            (" 4k ", 4096),
            ("1Ki", 1024),
            ("1gib", 1 << 30),
            ("1.5G", 3 << 29),
            ("0.5MiB", 512 << 10),
            ("1T", 1 << 40),
            ("1P", 1 << 50),
            ("10B", 10),
            ("0", 0),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse(input), Ok(bytes), "{input}");
        }
    }

    #[test]
    fn refuses_nonsense_naming_the_accepted_forms() {
        for (input, why) in [
            ("lots", "does not start with a number"),
            ("-1", "cannot be negative"),
            ("-1G", "cannot be negative"),
            ("1.5.5G", "malformed"),
            ("1.G", "malformed"),
            (".5G", "malformed"),
            ("", "empty"),
            ("2GB", "ambiguous"),
            ("2 mb", "ambiguous"),
            ("2X", "unit is not known"),
            ("2GiBs", "unit is not known"),
            ("0.3B", "not a whole number of bytes"),
            ("16384P", "larger than 16 EiB"),
            ("18446744073709551616", "larger than 16 EiB"),
            ("1 2G", "unit is not known"),
        ] {
            let msg = parse(input).unwrap_err();
            assert!(msg.contains(why), "{input:?}: {msg}");
            assert!(msg.contains("512MiB, 2GiB"), "{input:?}: {msg}");
        }
    }

    #[test]
    fn json_numbers_and_strings() {
        let b: Bytes = serde_json::from_str("1073741824").unwrap();
        assert_eq!(b, Bytes::from_gib(1));
        let b: Bytes = serde_json::from_str("\"256MiB\"").unwrap();
        assert_eq!(b, Bytes::from_mib(256));
        let b: Bytes = serde_json::from_str("1024.0").unwrap();
        assert_eq!(b.get(), 1024);
        for bad in ["-1", "1.5", "\"lots\"", "true", "null", "1e30"] {
            let err = serde_json::from_str::<Bytes>(bad).unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad}");
        }
        let err = serde_json::from_str::<Bytes>("\"lots\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("\"lots\" is not a size"), "{err}");
        let err = serde_json::from_str::<Bytes>("-1").unwrap_err().to_string();
        assert!(err.contains("cannot be negative"), "{err}");
    }

    #[test]
    fn serialises_as_integer_bytes() {
        assert_eq!(
            serde_json::to_string(&Bytes::from_mib(256)).unwrap(),
            "268435456"
        );
        let back: Bytes =
            serde_json::from_str(&serde_json::to_string(&Bytes::new(7)).unwrap()).unwrap();
        assert_eq!(back.get(), 7);
    }

    #[test]
    fn displays_for_people_and_round_trips() {
        for (bytes, shown) in [
            (Bytes::from_gib(2), "2 GiB"),
            (Bytes::from_mib(1536), "1.5 GiB"),
            (Bytes::from_mib(256), "256 MiB"),
            (Bytes::new(1000), "1000 B"),
            (Bytes::new(0), "0 B"),
            (Bytes::new(1024), "1 KiB"),
            (Bytes::new((1 << 30) + (1 << 30) / 4), "1.25 GiB"),
        ] {
            assert_eq!(bytes.to_string(), shown);
            assert_eq!(shown.parse::<Bytes>().unwrap(), bytes, "{shown}");
        }
        // Inexact sizes are shown rounded down, for people only.
        assert_eq!(Bytes::new((256 << 20) + 1).to_string(), "256 MiB");
    }

    #[test]
    fn helpers() {
        assert_eq!(Bytes::from_gib(1).mib(), 1024);
        assert!(Bytes::from_mib(3).is_multiple_of(Bytes::MIB));
        assert!(!Bytes::new(1000).is_multiple_of(Bytes::MIB));
        assert!(!Bytes::new(1000).is_multiple_of(0));
        assert_eq!(Bytes::from_gib(u64::MAX).get(), u64::MAX);
    }
}
