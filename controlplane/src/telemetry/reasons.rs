//! The `reason` label of `isthmus_xds_rejects_total`: a NACK's message made into a short key
//! of bounded cardinality. Messages carry resource names, addresses and indices, so they are
//! never labels themselves.
//!
//! [`reason_key`] keeps what says *why*:
//!
//! 1. the first error only (`isthmus-proxy` joins several with `"; "`);
//! 2. without `isthmus-proxy`'s resource label (`lds "virtualInbound": `, `resources[3]: `)
//!    and its path of the whole resource (`(resource): `);
//! 3. when what is left starts with a field path (`filter_chains[0].filters[1]: why`), the
//!    path with its list indices and map keys blanked and typed extensions by their last name
//!    (`filter_chains[].filters[].typed_config(RBAC)`);
//! 4. otherwise (Envoy's messages) its first [`MAX_WORDS`] words, lowercased, leaving out
//!    words with digits or quotes and stopping at a word that ends with `:` (what follows a
//!    colon names things);
//! 5. at most [`MAX_CHARS`] characters; `unknown` when nothing is left.
//!
//! [`BoundedReasons`] then admits the first [`MAX_REASONS`] distinct keys of the process's
//! life; any other is [`OTHER`].

use std::collections::BTreeSet;

use parking_lot::Mutex;

/// How many distinct reasons one process labels before the rest become [`OTHER`].
pub const MAX_REASONS: usize = 20;
/// The longest reason, in characters.
pub const MAX_CHARS: usize = 64;
/// The most words a reason keeps from a message without a field path.
pub const MAX_WORDS: usize = 5;
/// The reason of every key past [`MAX_REASONS`].
pub const OTHER: &str = "other";
/// The reason of a message from which nothing is left.
pub const UNKNOWN: &str = "unknown";

/// The key of a NACK's message (see the module documentation).
pub fn reason_key(message: &str) -> String {
    let first = message.split("; ").next().unwrap_or_default().trim();
    let rest = strip_resource_label(first);
    // `isthmus-proxy`'s path of the resource as a whole says nothing.
    let rest = rest.strip_prefix("(resource): ").unwrap_or(rest);
    let key = match field_path(rest) {
        Some(path) => path,
        None => first_words(rest),
    };
    let key: String = key.chars().take(MAX_CHARS).collect();
    if key.is_empty() {
        UNKNOWN.to_owned()
    } else {
        key
    }
}

/// `rest` of `<type> "<name>": rest` or `resources[<i>]: rest` (`isthmus-proxy`'s labels),
/// else `text` as it is.
fn strip_resource_label(text: &str) -> &str {
    if let Some(after) = text.strip_prefix("resources[")
        && let Some((index, rest)) = after.split_once("]: ")
        && index.chars().all(|c| c.is_ascii_digit())
    {
        return rest;
    }
    let Some((kind, quoted)) = text.split_once(' ') else {
        return text;
    };
    if !kind.chars().all(|c| c.is_ascii_lowercase()) || !quoted.starts_with('"') {
        return text;
    }
    // The name is Rust's `{:?}` of a string: backslash escapes inside double quotes.
    let mut escaped = false;
    for (i, c) in quoted.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return quoted[i + 1..].strip_prefix(": ").unwrap_or(text),
            _ => {}
        }
    }
    text
}

/// The field path `text` starts with (`path: why`), indices and map keys blanked; `None`
/// when it does not start with one (or only with the resource itself, `(resource)`).
fn field_path(text: &str) -> Option<String> {
    let mut path = String::new();
    let mut chars = text.chars();
    loop {
        match chars.next()? {
            ':' => break,
            '[' => {
                skip_bracket(&mut chars)?;
                path.push_str("[]");
            }
            '(' => {
                // A typed extension's type: its last name only.
                let (type_name, _) = chars.as_str().split_once(')')?;
                let short = type_name.rsplit('.').next().unwrap_or(type_name);
                path.push_str(&format!("({short})"));
                chars = chars.as_str()[type_name.len() + 1..].chars();
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => path.push(c),
            _ => return None,
        }
    }
    let after = chars.as_str();
    let is_path = (after.is_empty() || after.starts_with(' '))
        && path.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    is_path.then_some(path)
}

/// Consumes up to the `]` that closes an index or a quoted map key.
fn skip_bracket(chars: &mut std::str::Chars<'_>) -> Option<()> {
    let (mut quoted, mut escaped) = (false, false);
    loop {
        match chars.next()? {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ']' if !quoted => return Some(()),
            _ => {}
        }
    }
}

/// The first words of `text` that say why (see the module documentation).
fn first_words(text: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let ends_clause = word.ends_with(':');
        let trimmed = word.trim_end_matches([':', ',', ';', '.']);
        let named = trimmed
            .chars()
            .any(|c| c.is_ascii_digit() || matches!(c, '"' | '\'' | '`'));
        if ends_clause && !words.is_empty() {
            break;
        }
        if !named && !trimmed.is_empty() {
            words.push(trimmed.to_lowercase());
        }
        if ends_clause || words.len() == MAX_WORDS {
            break;
        }
    }
    words.join(" ")
}

/// The keys admitted as labels so far: at most a fixed number, shared by every stream.
#[derive(Debug)]
pub struct BoundedReasons {
    max: usize,
    admitted: Mutex<BTreeSet<String>>,
}

impl Default for BoundedReasons {
    fn default() -> Self {
        Self::new(MAX_REASONS)
    }
}

impl BoundedReasons {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: Mutex::new(BTreeSet::new()),
        }
    }

    /// The label of `message`: its key if admitted (now or before), else [`OTHER`].
    pub fn label(&self, message: &str) -> String {
        let key = reason_key(message);
        let mut admitted = self.admitted.lock();
        if admitted.contains(&key) || (admitted.len() < self.max && admitted.insert(key.clone())) {
            key
        } else {
            OTHER.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_messages() {
        let table = [
            // isthmus-proxy: label, field path (indices and keys blanked), reason.
            (
                "lds \"virtualInbound\": filter_chains[3].filters[0].typed_config(envoy.extensions.filters.network.rbac.v3.RBAC).rules: not supported by isthmus-proxy (see docs/xds-profile.md)",
                "filter_chains[].filters[].typed_config(RBAC).rules",
            ),
            (
                "rds \"8080\": virtual_hosts[1].request_headers_to_add[\"x-a]b\"].value: required; cds \"x\": type: required",
                "virtual_hosts[].request_headers_to_add[].value",
            ),
            (
                "cds \"outbound|80||a.b.svc.cluster.local\": (resource): the cluster has no name",
                "the cluster has no name",
            ),
            (
                "resources[2]: the resource has no body",
                "the resource has no body",
            ),
            (
                "isthmus-proxy does not subscribe to type.googleapis.com/envoy.X",
                "isthmus-proxy does not subscribe to",
            ),
            // Envoy: first words up to the named part.
            (
                "Error adding/updating listener(s) virtualInbound: Proto constraint validation failed",
                "error adding/updating listener(s)",
            ),
            (
                "Error adding/updating listener(s) 0.0.0.0_15006: unknown filter",
                "error adding/updating listener(s)",
            ),
            (
                "Proto constraint validation failed (ClusterValidationError.Name: value length is less than 1)",
                "proto constraint validation failed",
            ),
            ("'outbound|9080||x' cluster not found", "cluster not found"),
            ("", UNKNOWN),
            ("12345 \"6\"", UNKNOWN),
        ];
        for (message, key) in table {
            assert_eq!(reason_key(message), key, "{message}");
        }
    }

    #[test]
    fn a_key_is_never_longer_than_the_limit() {
        let long = format!("{}: why", "a".repeat(200));
        assert_eq!(reason_key(&long).chars().count(), MAX_CHARS);
    }

    #[test]
    fn reasons_past_the_limit_are_other_the_admitted_ones_stay() {
        let reasons = BoundedReasons::new(2);
        assert_eq!(reasons.label("a.b: required"), "a.b");
        assert_eq!(reasons.label("lds \"x\": c: required"), "c");
        assert_eq!(reasons.label("d: required"), OTHER);
        assert_eq!(reasons.label("lds \"y\": a.b[7]: required"), OTHER);
        assert_eq!(reasons.label("lds \"y\": a.b: required"), "a.b");
        assert_eq!(reasons.admitted.lock().len(), 2);
    }
}
