//! Durations as Istio's CRDs write them: `10s`, `1.5s`, `100ms`, `1m30s`, `2h`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in Istio's notation (CRD pattern `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IstioDuration(pub Duration);

impl IstioDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a duration like 10s, 1.5s, 100ms, 1m30s or 2h");
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (number, tail) = rest.split_at(digits);
            if number.is_empty()
                || number.starts_with('.')
                || number.ends_with('.')
                || number.matches('.').count() > 1
            {
                return Err(bad());
            }
            let value: f64 = number.parse().map_err(|_| bad())?;
            let (unit, after) = if let Some(after) = tail.strip_prefix("ms") {
                (0.001, after)
            } else if let Some(after) = tail.strip_prefix('s') {
                (1.0, after)
            } else if let Some(after) = tail.strip_prefix('m') {
                (60.0, after)
            } else if let Some(after) = tail.strip_prefix('h') {
                (3600.0, after)
            } else {
                return Err(bad());
            };
            let part = Duration::try_from_secs_f64(value * unit).map_err(|_| bad())?;
            total = total.checked_add(part).ok_or_else(bad)?;
            rest = after;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(feature = "crd")]
impl schemars::JsonSchema for IstioDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IstioDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$",
            "description": "A duration: 10s, 1.5s, 100ms, 1m30s, 2h."
        })
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        for (text, ms) in [
            ("10s", 10_000),
            ("1.5s", 1500),
            ("100ms", 100),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("0s", 0),
        ] {
            assert_eq!(
                IstioDuration::parse(text).unwrap().0,
                Duration::from_millis(ms),
                "{text}"
            );
        }
        for bad in [
            "", "10", "s", "1.s", ".5s", "1..5s", "10x", "-1s", "1e3s", "10 s",
        ] {
            assert!(IstioDuration::parse(bad).is_err(), "{bad}");
        }
    }
}
