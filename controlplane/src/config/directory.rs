//! Reading a configuration directory: every `*.yaml` / `*.yml` file under it (recursively, in
//! name order; hidden files and folders skipped, which also skips the `..data` links of a
//! mounted ConfigMap), every document in each file. Either the whole directory is valid and
//! becomes one [`ConfigSnapshot`], or every problem found is returned.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isthmus_api::{Resource, ResourceError, from_value};

use super::error::ConfigError;
use super::loader::DirLoader;
use super::snapshot::{ConfigSnapshot, DEFAULT_NAMESPACE, ResourceKey, SourceRef};
use super::yaml::documents;

/// Reads and validates every document under `dir`.
pub fn load_dir(dir: &Path) -> Result<ConfigSnapshot, Vec<ConfigError>> {
    DirLoader::default().load(dir)
}

/// A document read: its resource and where, or its errors.
pub type ParsedDocument = Result<(Arc<Resource>, SourceRef), Vec<ConfigError>>;

/// Reads the YAML text `text` (named `file` in errors) into a snapshot, as one file of a directory.
pub fn load_text(text: &str, file: &Path) -> Result<ConfigSnapshot, Vec<ConfigError>> {
    let mut resources = BTreeMap::new();
    let mut errors = Vec::new();
    add_text(text, file, &mut resources, &mut errors);
    if errors.is_empty() {
        Ok(ConfigSnapshot::from_shared(resources))
    } else {
        Err(errors)
    }
}

/// Adds every document of one file's text.
fn add_text(
    text: &str,
    file: &Path,
    resources: &mut BTreeMap<ResourceKey, (Arc<Resource>, SourceRef)>,
    errors: &mut Vec<ConfigError>,
) {
    for document in parse_text(text, file) {
        match document {
            Ok((resource, source)) => insert(resources, errors, resource, source),
            Err(e) => errors.extend(e),
        }
    }
}

/// Each document of one file's text, validated: its resource, or its errors (or the file's,
/// when it is not YAML).
pub fn parse_text(text: &str, file: &Path) -> Vec<ParsedDocument> {
    let docs = match documents(text) {
        Ok(docs) => docs,
        Err(e) => {
            return vec![Err(vec![ConfigError {
                line: e.line,
                ..ConfigError::file(file.to_owned(), format!("invalid YAML: {}", e.reason))
            }])];
        }
    };
    docs.into_iter()
        .map(|doc| {
            let source = SourceRef {
                file: file.to_owned(),
                document: doc.index,
                line: doc.line,
            };
            check_document(doc.value, &source).map(|resource| (Arc::new(resource), source))
        })
        .collect()
}

/// Validates one document read from `source`: the resource, or every problem located.
pub fn check_document(
    value: serde_json::Value,
    source: &SourceRef,
) -> Result<Resource, Vec<ConfigError>> {
    from_value(value).map_err(|e| resource_errors(source, e))
}

pub(super) fn insert(
    resources: &mut BTreeMap<ResourceKey, (Arc<Resource>, SourceRef)>,
    errors: &mut Vec<ConfigError>,
    resource: Arc<Resource>,
    source: SourceRef,
) {
    let meta = resource.metadata();
    let key = ResourceKey {
        kind: resource.kind(),
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name: meta.name.clone(),
    };
    match resources.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert((resource, source));
        }
        Entry::Occupied(existing) => errors.push(ConfigError {
            resource: Some(existing.key().to_string()),
            ..located(
                &source,
                format!("duplicate: also defined at {}", existing.get().1),
            )
        }),
    }
}

fn located(source: &SourceRef, reason: String) -> ConfigError {
    // Document 0: an object of the Kubernetes API, located by its path alone.
    let in_file = source.document != 0;
    ConfigError {
        file: source.file.clone(),
        document: in_file.then_some(source.document),
        line: in_file.then_some(source.line),
        resource: None,
        path: None,
        reason,
    }
}

fn resource_errors(source: &SourceRef, e: ResourceError) -> Vec<ConfigError> {
    match e {
        ResourceError::Invalid { kind, name, errors } => errors
            .into_iter()
            .map(|fe| ConfigError {
                resource: Some(format!("{kind} {name}")),
                path: Some(fe.path),
                ..located(source, fe.reason)
            })
            .collect(),
        other => vec![located(source, other.to_string())],
    }
}

/// Appends the YAML files under `dir` to `out`; a directory that cannot be read is an error.
pub(super) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<ConfigError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ConfigError::file(
                dir.to_owned(),
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Follows symlinks, as a mounted ConfigMap needs.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&path, out, errors);
        } else if meta.is_file()
            && path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use isthmus_api::Kind;

    use super::*;
    use crate::config::ConfigStore;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
";

    const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: http}]
";

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_every_document_of_every_yaml_file() {
        let dir = dir_with(&[
            ("a.yaml", &format!("{VS}---\n{SE}")),
            ("nested/b.yml", "# nothing but a comment\n"),
            ("notes.txt", "not: [yaml"),
            (".hidden/c.yaml", "not: [yaml"),
            ("..data/d.yaml", "not: [yaml"),
        ]);
        let snapshot = load_dir(dir.path()).unwrap();
        assert_eq!(snapshot.len(), 2);
        let key = ResourceKey {
            kind: Kind::ServiceEntry,
            namespace: "default".into(),
            name: "reviews".into(),
        };
        assert!(
            snapshot.get(&key).is_some(),
            "namespace defaults to `default`"
        );
        let (_, _, source) = snapshot
            .iter()
            .find(|(k, ..)| k.kind == Kind::ServiceEntry)
            .unwrap();
        assert_eq!((source.document, source.line), (2, 13));
    }

    #[test]
    fn errors_name_file_document_line_resource_and_field() {
        let bad = VS.replace(
            "  - route:",
            "  - rewrite: {uriRegexRewrite: {match: a, rewrite: b}}\n    route:",
        );
        let dir = dir_with(&[
            ("good.yaml", SE),
            ("routes.yaml", &format!("{SE}---\n{bad}")),
        ]);
        let errors = load_dir(dir.path()).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        // The ServiceEntry in routes.yaml duplicates the one in good.yaml.
        assert!(text.iter().any(|e| e.contains("routes.yaml:1 (document 1): ServiceEntry default/reviews: duplicate: also defined at")
            && e.contains("good.yaml:1 (document 1)")), "{text:#?}");
        let mirror = errors
            .iter()
            .find(|e| e.path.as_deref() == Some("spec.http[0].rewrite.uriRegexRewrite"))
            .unwrap();
        assert_eq!(mirror.document, Some(2));
        assert_eq!(mirror.line, Some(9));
        assert_eq!(mirror.resource.as_deref(), Some("VirtualService reviews"));
        assert!(mirror.file.ends_with("routes.yaml"));
        assert_eq!(
            mirror.to_string().rsplit_once("routes.yaml").unwrap().1,
            ":9 (document 2): VirtualService reviews: spec.http[0].rewrite.uriRegexRewrite: not supported by Isthmus"
        );
    }

    #[test]
    fn yaml_syntax_errors_and_unreadable_input_are_located() {
        let dir = dir_with(&[("broken.yaml", "apiVersion: v1\nkind: [unclosed\n")]);
        fs::write(dir.path().join("binary.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let errors = load_dir(dir.path()).unwrap_err();
        let broken = errors
            .iter()
            .find(|e| e.file.ends_with("broken.yaml"))
            .unwrap();
        assert!(broken.reason.starts_with("invalid YAML"), "{broken}");
        assert!(broken.line.is_some(), "{broken}");
        let binary = errors
            .iter()
            .find(|e| e.file.ends_with("binary.yaml"))
            .unwrap();
        assert_eq!(binary.reason, "not UTF-8 text");

        let missing = load_dir(&dir.path().join("nope")).unwrap_err();
        assert!(
            missing[0]
                .to_string()
                .contains("nope: cannot read directory"),
            "{}",
            missing[0]
        );
    }

    #[test]
    fn a_bad_change_keeps_the_last_good_configuration() {
        let dir = dir_with(&[("a.yaml", VS)]);
        let store = ConfigStore::new();
        assert!(store.apply(load_dir(dir.path())));
        assert_eq!(store.status().version, 1);

        // Two changes at once, one of them bad: nothing of it is applied.
        fs::write(dir.path().join("b.yaml"), SE).unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            VS.replace("host: reviews", "host: \"bad host\""),
        )
        .unwrap();
        assert!(!store.apply(load_dir(dir.path())));
        assert_eq!(
            store.current().len(),
            1,
            "the new ServiceEntry was not half-applied"
        );
        let status = store.status();
        assert_eq!(status.version, 1);
        assert_eq!(status.errors.len(), 1);
        assert!(
            status.errors[0]
                .to_string()
                .contains("spec.http[0].route[0].destination.host"),
            "{}",
            status.errors[0]
        );

        // Fixed: both changes apply together, errors clear.
        fs::write(dir.path().join("a.yaml"), VS).unwrap();
        assert!(store.apply(load_dir(dir.path())));
        assert_eq!(store.current().len(), 2);
        assert_eq!(store.status().version, 2);
        assert!(store.status().errors.is_empty());

        // Reloading unchanged files publishes nothing.
        assert!(!store.apply(load_dir(dir.path())));
        assert_eq!(store.status().version, 2);
    }
}
