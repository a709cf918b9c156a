//! Field paths and the errors that carry them: how a resource outside the profile is rejected.
//!
//! Every conversion walks the Envoy message with a [`Path`] and reports the first field it does
//! not honour. Unsupported fields are found by exhaustive destructuring (a new field in the
//! Envoy API is a compile error here, never a silently ignored setting) and [`reject_set!`],
//! which refuses any of them that is not at its default. A field bound to `_` in a
//! destructuring is accepted without effect (tuning or cosmetics; `docs/xds-profile.md` lists
//! them).

use std::fmt;

/// Where in a resource a field is, as Envoy's JSON names it: `filter_chains[0].filters[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of `field` inside this one.
    pub fn field(&self, field: &str) -> Self {
        let field = field.strip_prefix("r#").unwrap_or(field);
        if self.0.is_empty() {
            Self(field.to_owned())
        } else {
            Self(format!("{}.{field}", self.0))
        }
    }

    /// The path of element `index` of the list at this path.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The path of the entry `key` of the map at this path.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key:?}]", self.0))
    }

    /// A field of a typed extension: `typed_config(envoy.extensions...Rbac)`.
    pub fn typed(&self, field: &str, type_name: &str) -> Self {
        self.field(&format!("{field}({type_name})"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(resource)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// A resource the proxy will not apply: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Invalid {
    pub path: Path,
    pub reason: String,
}

impl Invalid {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            reason: reason.into(),
        }
    }

    pub fn unsupported(path: &Path) -> Self {
        Self::new(
            path,
            "not supported by isthmus-proxy (see docs/xds-profile.md)",
        )
    }

    pub fn required(path: &Path) -> Self {
        Self::new(path, "required")
    }
}

pub type Checked<T> = Result<T, Invalid>;

/// Refuses every listed field that is not at its default value (unset, empty, zero, false).
/// `reject_set!(path; field_a, field_b)` checks the local bindings `field_a` and `field_b`.
macro_rules! reject_set {
    ($path:expr; $($field:ident),* $(,)?) => {
        $(
            if !$crate::config::check::is_default(&$field) {
                return Err($crate::config::check::Invalid::unsupported(&$path.field(stringify!($field))));
            }
        )*
    };
}
pub(crate) use reject_set;

/// Whether `value` is its type's default (unset, empty, zero, false).
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Converts every element of the list `field` (at `path`), each with its own path.
pub fn each<T, U>(
    items: Vec<T>,
    path: &Path,
    field: &str,
    convert: impl Fn(T, &Path) -> Checked<U>,
) -> Checked<Vec<U>> {
    let path = path.field(field);
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(item, &path.index(i)))
        .collect()
}

/// A value that must be present.
pub fn required<T>(value: Option<T>, path: &Path) -> Checked<T> {
    value.ok_or_else(|| Invalid::required(path))
}

/// A protobuf enum field's value, which must be one of `allowed`.
pub fn one_of<T: TryFrom<i32> + PartialEq + Copy + fmt::Debug>(
    value: i32,
    allowed: &[T],
    path: &Path,
) -> Checked<T> {
    match T::try_from(value) {
        Ok(v) if allowed.contains(&v) => Ok(v),
        Ok(v) => Err(Invalid::new(
            path,
            format!("{v:?} is not supported by isthmus-proxy (supported: {allowed:?})"),
        )),
        Err(_) => Err(Invalid::new(path, format!("unknown value {value}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_envoy_json() {
        let p = Path::root()
            .field("filter_chains")
            .index(0)
            .field("filters")
            .index(1)
            .typed("typed_config", "HttpConnectionManager")
            .field("r#type");
        assert_eq!(
            p.to_string(),
            "filter_chains[0].filters[1].typed_config(HttpConnectionManager).type"
        );
        assert_eq!(Path::root().field("m").key("a").to_string(), "m[\"a\"]");
    }

    #[test]
    fn a_set_unsupported_field_is_named() {
        fn check(reuse_port: bool, stat_prefix: String) -> Checked<()> {
            reject_set!(Path::root().field("listener"); reuse_port, stat_prefix);
            Ok(())
        }
        assert!(check(false, String::new()).is_ok());
        assert_eq!(
            check(false, "x".into()).unwrap_err().path.as_str(),
            "listener.stat_prefix"
        );
    }
}
