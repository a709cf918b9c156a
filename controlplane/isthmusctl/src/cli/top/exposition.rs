//! The sample lines of a Prometheus text exposition (format 0.0.4, what every metrics endpoint
//! of ours serves without an `Accept` header; `api/runtime/src/metrics_format.rs`), typed:
//! metric name, labels, value.
//!
//! Why our own parser and not a crate: `prometheus-parse` (0.2.5, the maintained choice) splits
//! a label set on every `,` and `=` and ends it at the first `}`, so a label value holding
//! one of them (Envoy's `response_flags="UH,UF"`, a URL in a principal) or an escaped quote
//! silently corrupts the labels, which are exactly what `top` groups by; `openmetrics-parser`
//! is LGPL-3.0 in an Apache-2.0 workspace. What `top` needs of the format is small and fixed by
//! the exposition specification: comments (`# HELP`, `# TYPE`, `# EOF`) carry nothing it uses,
//! and a sample line is `name{label="value",...} value [timestamp]`, label values escaped with
//! `\\`, `\"` and `\n`. Trailing OpenMetrics exemplars (`# {...} v`) are ignored, so the
//! OpenMetrics text parses too.

use std::collections::BTreeMap;

/// A label set, ordered (so it can key a series).
pub type Labels = BTreeMap<String, String>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// A line that is not a comment, a blank line or a sample; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Every sample of `text`, in order; the first malformed line is an error.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|reason| ParseError {
            line: index + 1,
            reason,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut cursor = Cursor { rest: line };
    let name = cursor.name(is_metric_name_start, is_metric_name_char);
    if name.is_empty() {
        return Err(format!("no metric name in {line:?}"));
    }
    let name = name.to_owned();
    cursor.skip_blanks();
    let mut labels = Labels::new();
    if cursor.eat('{') {
        loop {
            cursor.skip_blanks();
            if cursor.eat('}') {
                break;
            }
            let label = cursor.name(is_label_name_start, is_label_name_char);
            if label.is_empty() {
                return Err(format!(
                    "{name}: a label name expected at {:?}",
                    cursor.rest
                ));
            }
            let label = label.to_owned();
            cursor.skip_blanks();
            if !cursor.eat('=') {
                return Err(format!("{name}: `=` expected after label {label}"));
            }
            cursor.skip_blanks();
            let value = cursor
                .quoted()
                .map_err(|e| format!("{name}: label {label}: {e}"))?;
            if labels.insert(label.clone(), value).is_some() {
                return Err(format!("{name}: label {label} given twice"));
            }
            cursor.skip_blanks();
            if cursor.eat(',') {
                continue;
            }
            if cursor.eat('}') {
                break;
            }
            return Err(format!("{name}: `,` or `}}` expected at {:?}", cursor.rest));
        }
    }
    cursor.skip_blanks();
    let value = cursor.rest.split_ascii_whitespace().next().unwrap_or("");
    if value.is_empty() {
        return Err(format!("{name}: no value"));
    }
    let value = parse_float(value).ok_or_else(|| format!("{name}: bad value {value:?}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Go's `ParseFloat` as the format uses it: decimals, exponents, `NaN`, `+Inf`, `-Inf`.
pub fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

fn is_metric_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_metric_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_label_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// The longest name at the cursor (empty when none starts here).
    fn name(&mut self, start: fn(char) -> bool, then: fn(char) -> bool) -> &'a str {
        if !self.rest.starts_with(start) {
            return "";
        }
        let end = self
            .rest
            .char_indices()
            .find(|&(_, c)| !then(c))
            .map_or(self.rest.len(), |(i, _)| i);
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        name
    }

    /// A double-quoted label value, unescaped (`\\`, `\"`, `\n`; any other escaped character
    /// stands for itself, as Prometheus reads it).
    fn quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err(format!("a quoted value expected at {:?}", self.rest));
        }
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("unterminated quoted value".to_owned())
    }
}
