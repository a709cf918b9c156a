//! Splitting YAML text into documents, each with the line it starts on.

use serde_json::Value;
use serde_saphyr::Spanned;

/// A bound on what one file may make the parser do (nesting, aliases, size), so a hostile file
/// (a "billion laughs" alias bomb, say) is refused rather than exhausting memory.
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// The most documents one file may hold.
pub const MAX_DOCUMENTS: usize = 65_536;

/// One YAML document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position among the file's non-empty documents.
    pub index: usize,
    /// Line the document's content starts on.
    pub line: u64,
    pub value: Value,
}

/// A file that is not valid YAML; `line` when the parser knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: Option<u64>,
    pub reason: String,
}

/// Parses every document of `text`. Empty documents (a lone `---`, comments only) are skipped.
pub fn documents(text: &str) -> Result<Vec<Document>, YamlError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(YamlError {
            line: None,
            reason: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    // The parser's default budget guards against alias bombs and separator storms; its
    // document and node counts are raised to what an 8 MiB file of real configuration holds
    // (a generated file of a thousand services is a few thousand documents).
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: MAX_DOCUMENTS,
            max_nodes: 2_000_000,
            max_events: 8_000_000,
        },
    };
    let spanned: Vec<Spanned<Value>> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| {
            let reason = e.to_string();
            let line = e.location().map(|l| l.line());
            YamlError {
                line,
                reason: first_line(&reason),
            }
        })?;
    Ok(spanned
        .into_iter()
        .filter(|d| !d.value.is_null())
        .enumerate()
        .map(|(i, d)| Document {
            index: i + 1,
            line: d.referenced.line(),
            value: d.value,
        })
        .collect())
}

/// serde-saphyr renders a source snippet after the message; keep the message.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_their_starting_line() {
        let docs =
            documents("# header\na: 1\n---\n---\n# only a comment\n---\nb:\n  c: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].line), (1, 2));
        assert_eq!((docs[1].index, docs[1].line), (2, 7));
        assert_eq!(docs[1].value["b"]["c"], 2);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = documents("a: 1\nb: [unclosed\nc: 3\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
        assert!(!err.reason.is_empty());
    }

    #[test]
    fn alias_bombs_and_duplicates_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "{}: &{} [*{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}]\n",
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char
            ));
        }
        assert!(documents(&bomb).is_err());
        assert!(
            documents("a: 1\na: 2\n").is_err(),
            "duplicate keys are an error"
        );
    }
}
