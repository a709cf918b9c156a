//! Host names as DNS carries them: what `isthmusd` puts in a sidecar's name table and what the
//! sidecar accepts from it, checked by the same rule on both ends.

/// Why `name` is not a DNS name, or `Ok`: 1 to 253 bytes, no trailing dot, labels of 1 to 63
/// letters, digits, `-` or `_`.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a DNS name (1 to 253 bytes)"));
    }
    match name.split('.').find(|label| !is_label(label)) {
        None => Ok(()),
        Some(label) => Err(format!(
            "{name:?} is not a DNS name (label {label:?}: 1 to 63 letters, digits, '-' or '_')"
        )),
    }
}

fn is_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn dns_names_and_what_is_not_one() {
        for ok in [
            "ratings.bookinfo.svc.green-imports.local",
            "a",
            "_srv.x-y.example",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let long_label = "x".repeat(64);
        let long_name = ["a"; 128].join(".");
        for bad in [
            "",
            "a..b",
            "a.b.",
            ".a",
            "sp ace.example",
            "é.example",
            &long_label,
            &long_name,
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
