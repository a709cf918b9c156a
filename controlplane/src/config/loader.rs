//! Reading a configuration directory again after a change without parsing what did not
//! change: a file whose bytes are the same keeps its documents, and in a file that changed,
//! each document whose text is the same keeps its resource (a large generated file with one
//! endpoint edited costs that document). The result is always what a fresh
//! [`load_dir`](super::directory::load_dir) gives, errors in the same order; a document kept
//! is the same shared resource in the new snapshot, not a copy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isthmus_api::Resource;

use super::directory::{ParsedDocument, check_document, collect_files, insert, parse_text};
use super::error::ConfigError;
use super::snapshot::{ConfigSnapshot, ResourceKey, SourceRef};
use super::yaml::{MAX_DOCUMENTS, MAX_FILE_BYTES, documents};

/// Loads one directory again and again (see the module's documentation).
#[derive(Debug, Default)]
pub struct DirLoader {
    files: HashMap<PathBuf, ParsedFile>,
}

/// One file as last read.
#[derive(Debug, Default)]
struct ParsedFile {
    bytes: Vec<u8>,
    /// Each document's resource or errors, in order (or the errors of the file as a whole).
    documents: Vec<ParsedDocument>,
    /// The valid documents by their text (see [`Known`]).
    by_text: HashMap<String, Known>,
}

impl DirLoader {
    pub fn load(&mut self, dir: &Path) -> Result<ConfigSnapshot, Vec<ConfigError>> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        collect_files(dir, &mut files, &mut errors);
        files.sort();

        let mut previous = std::mem::take(&mut self.files);
        let mut resources: BTreeMap<ResourceKey, (Arc<Resource>, SourceRef)> = BTreeMap::new();
        for file in files {
            let bytes = match std::fs::read(&file) {
                Ok(bytes) => bytes,
                Err(e) => {
                    errors.push(ConfigError::file(file, format!("cannot read: {e}")));
                    continue;
                }
            };
            let parsed = match previous.remove(&file) {
                Some(cached) if cached.bytes == bytes => cached,
                cached => parse_file(&file, bytes, cached.unwrap_or_default()),
            };
            for document in &parsed.documents {
                match document {
                    Ok((resource, source)) => {
                        insert(
                            &mut resources,
                            &mut errors,
                            resource.clone(),
                            source.clone(),
                        );
                    }
                    Err(e) => errors.extend(e.iter().cloned()),
                }
            }
            self.files.insert(file, parsed);
        }
        if errors.is_empty() {
            Ok(ConfigSnapshot::from_shared(resources))
        } else {
            Err(errors)
        }
    }
}

/// `file` read again, keeping from `before` the documents whose text did not change. A file
/// read for the first time is parsed whole, as [`load_dir`](super::directory::load_dir) does.
fn parse_file(file: &Path, bytes: Vec<u8>, before: ParsedFile) -> ParsedFile {
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return ParsedFile {
            documents: vec![Err(vec![ConfigError::file(
                file.to_owned(),
                "not UTF-8 text",
            )])],
            bytes,
            by_text: HashMap::new(),
        };
    };
    let chunks = split(text);
    let reparsed = match &chunks {
        Some(chunks) if !before.by_text.is_empty() => reparse(chunks, file, &before.by_text),
        _ => None,
    };
    let documents = match reparsed {
        Some(documents) => documents,
        // First read, or anything unusual (directives, end markers, aliases, a syntax error):
        // the whole file, as a fresh load reads it, under the parser's limits for the file.
        None => parse_text(text, file),
    };
    let by_text = chunks
        .map(|chunks| remember(&chunks, &documents))
        .unwrap_or_default();
    ParsedFile {
        bytes,
        documents,
        by_text,
    }
}

/// `after`, the text of `file` read again after `before`: what [`DirLoader`] takes from the
/// file (for the fuzz target, which checks it against a whole-file parse).
pub fn read_again(file: &Path, before: &[u8], after: &[u8]) -> Vec<ParsedDocument> {
    let earlier = parse_file(file, before.to_vec(), ParsedFile::default());
    parse_file(file, after.to_vec(), earlier).documents
}

/// The valid documents by the text of the chunk each starts in; a chunk that holds more than
/// one document is not remembered.
fn remember(chunks: &[(&str, u64)], documents: &[ParsedDocument]) -> HashMap<String, Known> {
    let mut by_text: HashMap<String, Known> = HashMap::new();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let located: Vec<(usize, &Arc<Resource>, u64)> = documents
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .filter_map(|(resource, source)| {
            // The last chunk starting at or before the document's line.
            let i = chunks.partition_point(|(_, first)| *first <= source.line);
            let i = i.checked_sub(1)?;
            *seen.entry(i).or_default() += 1;
            Some((i, resource, source.line - chunks[i].1 + 1))
        })
        .collect();
    for (i, resource, line) in located {
        if seen[&i] == 1 {
            by_text.insert(chunks[i].0.to_owned(), (resource.clone(), line));
        }
    }
    by_text
}

/// A document remembered by its text: its resource and the line its content starts on,
/// counted from the first line of that text.
type Known = (Arc<Resource>, u64);

/// Each document of `chunks`, taken from `known` when its text is there, else parsed alone;
/// `None` when the file must be parsed whole (a chunk that does not parse, or holds more than
/// one document).
fn reparse(
    chunks: &[(&str, u64)],
    file: &Path,
    known: &HashMap<String, Known>,
) -> Option<Vec<ParsedDocument>> {
    let mut parsed = Vec::new();
    for (chunk, first_line) in chunks {
        let (resource, line) = match known.get(*chunk) {
            Some((resource, line)) => (Ok(resource.clone()), *line),
            None => {
                let mut docs = documents(chunk).ok()?;
                let Some(doc) = docs.pop() else {
                    continue; // empty: comments or a lone marker
                };
                if !docs.is_empty() {
                    return None;
                }
                let source = source_of(file, parsed.len() + 1, first_line + doc.line - 1);
                (check_document(doc.value, &source).map(Arc::new), doc.line)
            }
        };
        let source = source_of(file, parsed.len() + 1, first_line + line - 1);
        parsed.push(resource.map(|r| (r, source)));
    }
    Some(parsed)
}

fn source_of(file: &Path, document: usize, line: u64) -> SourceRef {
    SourceRef {
        file: file.to_owned(),
        document,
        line,
    }
}

/// The text of each document with the (1-based) line it starts on, split before each line
/// that starts a document (`---` at the start of a line). `None` — parse the file whole —
/// when anything could tie documents together or make the parser's limits for a whole file
/// matter: a size over the file limit or more documents than it allows, directives (`%`),
/// document end markers (`...`), a byte order mark, a carriage return that does not end a
/// line (the parser counts it as a line break), and anchors or aliases (`&`, `*` starting a
/// token), which could expand one document past what its text shows.
fn split(text: &str) -> Option<Vec<(&str, u64)>> {
    if text.len() > MAX_FILE_BYTES || text.starts_with('\u{feff}') {
        return None;
    }
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let before = if i == 0 { b'\n' } else { bytes[i - 1] };
        match b {
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => return None,
            b'&' | b'*' if matches!(before, b'\n' | b' ' | b'\t' | b'[' | b'{' | b',') => {
                return None;
            }
            _ => {}
        }
    }
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_number = i as u64 + 1;
        if line.starts_with('%') || marker(line, "...") {
            return None;
        }
        if marker(line, "---") && offset > start {
            chunks.push((&text[start..offset], start_line));
            start = offset;
            start_line = line_number;
        }
        offset += line.len();
    }
    if offset > start {
        chunks.push((&text[start..offset], start_line));
    }
    (chunks.len() <= MAX_DOCUMENTS).then_some(chunks)
}

/// Whether `line` is the marker `m` (alone, or followed by a space or tab).
fn marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::config::directory::load_dir;

    fn service(name: &str, port: u32) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{name}.shop.local]\n  ports: [{{number: {port}, name: http}}]\n"
        )
    }

    /// A kept load and a fresh load of the directory as it is now agree.
    fn same(loader: &mut DirLoader, dir: &Path) -> Result<ConfigSnapshot, Vec<ConfigError>> {
        let kept = loader.load(dir);
        let fresh = load_dir(dir);
        match (&kept, &fresh) {
            (Ok(a), Ok(b)) => {
                let a: Vec<_> = a
                    .iter()
                    .map(|(k, r, s)| (k.clone(), r.clone(), s.clone()))
                    .collect();
                let b: Vec<_> = b
                    .iter()
                    .map(|(k, r, s)| (k.clone(), r.clone(), s.clone()))
                    .collect();
                assert_eq!(a, b, "resources and where each was read");
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("{kept:?}\n{fresh:?}"),
        }
        kept
    }

    #[test]
    fn a_loader_that_keeps_unchanged_documents_loads_what_a_fresh_load_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        let mut loader = DirLoader::default();
        let write = |docs: &[String]| fs::write(&path, docs.join("---\n")).unwrap();
        let mut docs: Vec<String> = (0..5).map(|i| service(&format!("s{i}"), 80)).collect();
        write(&docs);
        fs::write(dir.path().join("other.yaml"), service("other", 81)).unwrap();
        assert_eq!(same(&mut loader, dir.path()).unwrap().len(), 6);
        let s1 = format!("---\n{}", service("s1", 80));
        let first = loader.files[&path].by_text[&s1].0.clone();

        // One document edited, one inserted before others (their lines and indexes move),
        // comments and an empty document.
        docs[3] = service("s3", 90);
        docs.insert(1, format!("# a comment\n{}", service("new", 82)));
        docs.insert(0, "# only a comment\n".into());
        write(&docs);
        assert_eq!(same(&mut loader, dir.path()).unwrap().len(), 7);
        assert!(
            Arc::ptr_eq(&loader.files[&path].by_text[&s1].0, &first),
            "an unchanged document is the same resource"
        );
        // Line ends the parser also counts, anchors, a byte order mark: each read as a fresh
        // load reads it, edited or not.
        for variant in [
            docs.join("---\n").replace('\n', "\r\n"),
            format!("# x\r# y\n---\n{}", docs.join("---\n")),
            format!(
                "{}---\nlabels: &l {{a: b}}\nother: *l\n",
                docs.join("---\n")
            ),
            format!("{}{}", '\u{feff}', docs.join("---\n")),
        ] {
            fs::write(&path, &variant).unwrap();
            let _ = same(&mut loader, dir.path());
            fs::write(&path, variant.replacen("number: 80", "number: 88", 1)).unwrap();
            let _ = same(&mut loader, dir.path());
        }
        write(&docs);
        assert_eq!(same(&mut loader, dir.path()).unwrap().len(), 7);

        // A duplicate, an invalid document, a syntax error: errors as a fresh load's.
        docs.push(service("s0", 80));
        write(&docs);
        assert!(same(&mut loader, dir.path()).is_err());
        docs.pop();
        docs.push(service("bad", 0));
        write(&docs);
        assert!(same(&mut loader, dir.path()).is_err());
        docs.pop();
        docs.push("kind: [unclosed\n".into());
        write(&docs);
        assert!(same(&mut loader, dir.path()).is_err());
        docs.pop();
        // Directives and end markers: read whole.
        fs::write(&path, format!("%YAML 1.2\n---\n{}...\n", service("s0", 80))).unwrap();
        assert_eq!(same(&mut loader, dir.path()).unwrap().len(), 2);
        write(&docs);
        assert_eq!(same(&mut loader, dir.path()).unwrap().len(), 7);
        fs::remove_file(dir.path().join("other.yaml")).unwrap();
        assert_eq!(same(&mut loader, dir.path()).unwrap().len(), 6);
        assert_eq!(loader.files.len(), 1, "a removed file is forgotten");
    }

    #[test]
    fn documents_split_at_their_start_markers_only() {
        let text = "a: 1\n---\nb: |\n  ---not a marker\n--- {c: 3}\n---\n";
        let chunks = split(text).unwrap();
        assert_eq!(
            chunks,
            [
                ("a: 1\n", 1),
                ("---\nb: |\n  ---not a marker\n", 2),
                ("--- {c: 3}\n", 5),
                ("---\n", 6)
            ]
        );
        assert!(split("%YAML 1.2\n---\na: 1\n").is_none());
        assert!(split("a: 1\n...\n").is_none());
    }
}
