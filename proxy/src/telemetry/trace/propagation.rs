//! Trace context in HTTP headers, as pure functions: W3C Trace Context (`traceparent`,
//! `tracestate`) and B3 (the single `b3` header and the multi `x-b3-*` headers).
//!
//! Extraction takes the first valid form in that order; anything malformed (bad lengths, upper
//! case where W3C wants lower, all-zero ids, repeated headers, bytes that are not ASCII) is
//! ignored as if absent, never an error. Injection writes both forms for the next hop.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::telemetry::header_scan::{HeaderScan, Traceparent};

// Header names as values, not `&str`: a `&str` key is parsed and validated at every lookup.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// W3C: vendors must propagate at least 512 characters of `tracestate`; a longer one (or one
/// with more than 32 members) is dropped whole rather than cut.
const MAX_TRACESTATE: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Which header the context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// The calling span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// 128 bits (a 64-bit B3 trace id is zero-extended).
    pub trace_id: u128,
    pub span_id: u64,
}

/// What a request says about its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub format: Format,
    /// `None` for a B3 sampling decision alone (`b3: 0`, `x-b3-sampled: 1`).
    pub parent: Option<Parent>,
    /// The caller's sampling decision; `None` when it defers it (B3 without one).
    pub sampled: Option<bool>,
    /// `tracestate`, validated (W3C only).
    pub trace_state: Option<String>,
}

/// The context to send on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: u128,
    /// This proxy's span: the next hop's parent.
    pub span_id: u64,
    /// This span's own parent, for `x-b3-parentspanid`.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    pub trace_state: Option<String>,
    /// Send B3 too (the caller spoke B3); W3C is always sent.
    pub b3: bool,
}

/// The request's trace context: `traceparent` (with `tracestate`), else `b3`, else `x-b3-*`.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    extract_scanned(headers, HeaderScan::of_request(headers))
}

/// [`extract`], with the request's [`HeaderScan::of_request`]: its `traceparent` is already
/// read, and no lookup is by a name that is absent.
pub fn extract_scanned(headers: &HeaderMap, scan: HeaderScan) -> Option<Incoming> {
    // `traceparent` was read in the scan.
    if let Traceparent::Valid(parent, sampled) = scan.traceparent {
        return Some(Incoming {
            format: Format::W3c,
            parent: Some(parent),
            sampled: Some(sampled),
            trace_state: scan.tracestate.then(|| trace_state(headers)).flatten(),
        });
    }
    if scan.b3
        && let Some(b3) = single(headers, B3)
        && let Some((parent, sampled)) = parse_b3_single(b3)
    {
        return Some(Incoming {
            format: Format::B3Single,
            parent,
            sampled,
            trace_state: None,
        });
    }
    if !scan.x_b3 {
        return None;
    }
    b3_multi(headers)
}

/// Writes the context naming `out.span_id` as the next hop's parent: W3C, and B3 multi when
/// the caller spoke B3; removes what would contradict it (a stale `b3`, `x-b3-flags`,
/// `x-b3-parentspanid`, `tracestate`, and the other B3 headers when B3 is not sent).
pub fn inject(headers: &mut HeaderMap, out: &Outgoing) {
    // One pass over the names first: most requests carry none of these, and a removal by name
    // hashes it, seven times per request otherwise.
    let stale = headers.keys().any(|name| {
        let name = name.as_str();
        name == "b3" || name == "tracestate" || name.starts_with("x-b3-")
    });
    if stale {
        for name in [B3, B3_FLAGS, B3_PARENT_SPAN_ID, TRACESTATE] {
            headers.remove(name);
        }
    }
    // `00-<trace>-<span>-<flags>`, written in place: this runs for every request.
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut traceparent[3..35], out.trace_id);
    hex_into(&mut traceparent[36..52], u128::from(out.span_id));
    traceparent[54] = if out.sampled { b'1' } else { b'0' };
    headers.insert(TRACEPARENT, ascii_value(&traceparent));
    if let Some(state) = out.trace_state.as_deref().filter(|s| !s.is_empty())
        && let Ok(value) = HeaderValue::from_str(state)
    {
        headers.insert(TRACESTATE, value);
    }
    if !out.b3 {
        if stale {
            for name in [B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED] {
                headers.remove(name);
            }
        }
        return;
    }
    let mut trace = [0u8; 32];
    hex_into(&mut trace, out.trace_id);
    headers.insert(B3_TRACE_ID, ascii_value(&trace));
    let mut span = [0u8; 16];
    hex_into(&mut span, u128::from(out.span_id));
    headers.insert(B3_SPAN_ID, ascii_value(&span));
    if let Some(parent) = out.parent_span_id {
        hex_into(&mut span, u128::from(parent));
        headers.insert(B3_PARENT_SPAN_ID, ascii_value(&span));
    }
    let flag = if out.sampled { "1" } else { "0" };
    headers.insert(B3_SAMPLED, HeaderValue::from_static(flag));
}

/// A header value of bytes this module wrote: lower-case hex, digits and `-`.
fn ascii_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("hex digits and dashes are a valid header value")
}

/// `value`'s low `out.len()` hex digits (an even number), lower case, most significant first.
fn hex_into(out: &mut [u8], value: u128) {
    let bytes = value.to_be_bytes();
    crate::hex::write(out, &bytes[bytes.len() - out.len() / 2..]);
}

/// The header's value when it appears exactly once and is visible ASCII.
fn single(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok().map(str::trim)
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (a later version may append `-...`), spaces around it
/// allowed: the parent and whether it was sampled.
pub fn parse_traceparent(value: &[u8]) -> Option<(Parent, bool)> {
    let b = value.trim_ascii();
    if b.len() < 55 || !b.is_ascii() {
        return None;
    }
    let version = hex_lower(&b[0..2])?;
    match version {
        0xff => return None,
        0 if b.len() != 55 => return None,
        _ if b.len() > 55 && b[55] != b'-' => return None,
        _ => {}
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let sixteen = |at: usize| crate::hex::parse_lower_16(b.get(at..at + 16)?.try_into().ok()?);
    let trace_id = (u128::from(sixteen(3)?) << 64) | u128::from(sixteen(19)?);
    let span_id = sixteen(36)?;
    let flags = hex_lower(&b[53..55])?;
    (trace_id != 0 && span_id != 0).then_some((Parent { trace_id, span_id }, flags & 1 == 1))
}

/// `tracestate`: every header joined with `,`, kept if well formed and within W3C's bounds.
fn trace_state(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for value in headers.get_all(TRACESTATE) {
        let value = value.to_str().ok()?.trim();
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(value);
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    let mut members = 0;
    for member in joined.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        members += 1;
        let (key, value) = member.split_once('=')?;
        if members > MAX_TRACESTATE_MEMBERS || !state_key(key) || !state_value(value) {
            return None;
        }
    }
    (members > 0).then_some(joined)
}

/// W3C's `key`: `[a-z0-9][a-z0-9_\-*/]{0,255}`, or `tenant@system` of such.
fn state_key(key: &str) -> bool {
    let part = |p: &str, max: usize| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.split_once('@') {
        Some((tenant, system)) => part(tenant, 241) && part(system, 14),
        None => part(key, 256),
    }
}

/// W3C's `value`: up to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn state_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|c| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=')
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]` or `b3: {sampling}`.
pub fn parse_b3_single(value: &str) -> Option<(Option<Parent>, Option<bool>)> {
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        [sampling] => Some((None, Some(b3_sampling(sampling)?))),
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let parent = Parent {
                trace_id: b3_trace_id(trace)?,
                span_id: b3_span_id(span)?,
            };
            let sampled = match rest.first() {
                Some(s) => Some(b3_sampling(s)?),
                None => None,
            };
            if let Some(parent_span) = rest.get(1) {
                b3_span_id(parent_span)?;
            }
            Some((Some(parent), sampled))
        }
        _ => None,
    }
}

/// `x-b3-traceid` and `x-b3-spanid` (both or neither), `x-b3-sampled`, `x-b3-flags: 1`
/// (debug: sampled).
fn b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let trace = single(headers, B3_TRACE_ID);
    let span = single(headers, B3_SPAN_ID);
    let debug = single(headers, B3_FLAGS) == Some("1");
    let sampled = match single(headers, B3_SAMPLED) {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) | None => None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    let parent = match (trace, span) {
        (Some(trace), Some(span)) => Some(Parent {
            trace_id: b3_trace_id(trace)?,
            span_id: b3_span_id(span)?,
        }),
        (None, None) => None,
        _ => return None,
    };
    if parent.is_none() && sampled.is_none() {
        return None;
    }
    Some(Incoming {
        format: Format::B3Multi,
        parent,
        sampled,
        trace_state: None,
    })
}

/// `1`, `0`, or `d` (debug: sampled).
fn b3_sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// 16 or 32 hex digits, not all zero.
fn b3_trace_id(s: &str) -> Option<u128> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    hex_any(s.as_bytes()).filter(|id| *id != 0)
}

/// 16 hex digits, not all zero.
fn b3_span_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    hex_any(s.as_bytes())
        .and_then(|id| u64::try_from(id).ok())
        .filter(|id| *id != 0)
}

/// Lower-case hex (W3C), at most 32 digits.
fn hex_lower(b: &[u8]) -> Option<u128> {
    hex_digits(b, &HEX_LOWER)
}

/// Hex of either case, 1 to 32 digits.
fn hex_any(b: &[u8]) -> Option<u128> {
    hex_digits(b, &HEX_ANY)
}

/// Not a digit, in the tables below.
const NOT_HEX: u8 = 0xff;

/// Each byte's value as a hex digit (lower case only, as W3C wants), else [`NOT_HEX`].
static HEX_LOWER: [u8; 256] = hex_table(false);
/// Each byte's value as a hex digit of either case, else [`NOT_HEX`].
static HEX_ANY: [u8; 256] = hex_table(true);

const fn hex_table(upper: bool) -> [u8; 256] {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        if upper {
            table[b'A' as usize + i] = 10 + i as u8;
        }
        i += 1;
    }
    table
}

/// 1 to 32 digits by `table`, read by table lookup: this runs for every traced request.
fn hex_digits(b: &[u8], table: &[u8; 256]) -> Option<u128> {
    if b.is_empty() || b.len() > 32 {
        return None;
    }
    // Two 64-bit halves: cheaper than shifting a u128 per digit.
    let split = b.len().saturating_sub(16);
    let (high, low) = b.split_at(split);
    let half = |digits: &[u8]| -> Option<u64> {
        let mut acc = 0u64;
        for c in digits {
            let d = table[usize::from(*c)];
            if d == NOT_HEX {
                return None;
            }
            acc = (acc << 4) | u64::from(d);
        }
        Some(acc)
    };
    Some((u128::from(half(high)?) << 64) | u128::from(half(low)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

    /// Request headers: (name, raw value).
    type Headers<'a> = Vec<(&'a str, &'a [u8])>;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        h
    }

    fn parent(trace_id: u128, span_id: u64) -> Option<Parent> {
        Some(Parent { trace_id, span_id })
    }

    #[test]
    fn w3c_trace_context_is_extracted() {
        let tp: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cases: Vec<(&str, HeaderMap, Option<Incoming>)> = vec![
            (
                "sampled",
                headers(&[("traceparent", tp)]),
                Some(Incoming {
                    format: Format::W3c,
                    parent: parent(TRACE, SPAN),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "not sampled, other flags ignored",
                headers(&[(
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe",
                )]),
                Some(Incoming {
                    format: Format::W3c,
                    parent: parent(TRACE, SPAN),
                    sampled: Some(false),
                    trace_state: None,
                }),
            ),
            (
                "tracestate joined across headers",
                headers(&[
                    ("traceparent", tp),
                    ("tracestate", b"congo=t61rcWkgMzE"),
                    ("tracestate", b"rojo=00f067aa0ba902b7, tenant@vendor=x"),
                ]),
                Some(Incoming {
                    format: Format::W3c,
                    parent: parent(TRACE, SPAN),
                    sampled: Some(true),
                    trace_state: Some(
                        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7, tenant@vendor=x".into(),
                    ),
                }),
            ),
            (
                "a malformed tracestate is dropped, the parent kept",
                headers(&[("traceparent", tp), ("tracestate", b"Upper=1")]),
                Some(Incoming {
                    format: Format::W3c,
                    parent: parent(TRACE, SPAN),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "a future version with more fields",
                headers(&[(
                    "traceparent",
                    b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
                )]),
                Some(Incoming {
                    format: Format::W3c,
                    parent: parent(TRACE, SPAN),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "W3C wins over B3",
                headers(&[
                    ("b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
                    ("traceparent", tp),
                ]),
                Some(Incoming {
                    format: Format::W3c,
                    parent: parent(TRACE, SPAN),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
        ];
        for (why, h, want) in cases {
            assert_eq!(extract(&h), want, "{why}");
        }
    }

    #[test]
    fn b3_is_extracted() {
        let t128 = 0x80f1_98ee_5634_3ba8_64fe_8b2a_57d3_eff7_u128;
        let s = 0xe457_b5a2_e4d8_6bd1_u64;
        let cases: Vec<(&str, HeaderMap, Option<Incoming>)> = vec![
            (
                "single, with decision and parent span",
                headers(&[(
                    "b3",
                    b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
                )]),
                Some(Incoming {
                    format: Format::B3Single,
                    parent: parent(t128, s),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "single, 64-bit trace id, deferred decision",
                headers(&[("b3", b"64fe8b2a57d3eff7-e457b5a2e4d86bd1")]),
                Some(Incoming {
                    format: Format::B3Single,
                    parent: parent(0x64fe_8b2a_57d3_eff7, s),
                    sampled: None,
                    trace_state: None,
                }),
            ),
            (
                "single, debug",
                headers(&[("b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d")]),
                Some(Incoming {
                    format: Format::B3Single,
                    parent: parent(t128, s),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "single, a decision alone",
                headers(&[("b3", b"0")]),
                Some(Incoming {
                    format: Format::B3Single,
                    parent: None,
                    sampled: Some(false),
                    trace_state: None,
                }),
            ),
            (
                "multi",
                headers(&[
                    ("x-b3-traceid", b"80f198ee56343ba864fe8b2a57d3eff7"),
                    ("x-b3-spanid", b"e457b5a2e4d86bd1"),
                    ("x-b3-parentspanid", b"05e3ac9a4f6e3b90"),
                    ("x-b3-sampled", b"0"),
                ]),
                Some(Incoming {
                    format: Format::B3Multi,
                    parent: parent(t128, s),
                    sampled: Some(false),
                    trace_state: None,
                }),
            ),
            (
                "multi, upper-case hex, debug flag",
                headers(&[
                    ("x-b3-traceid", b"80F198EE56343BA864FE8B2A57D3EFF7"),
                    ("x-b3-spanid", b"E457B5A2E4D86BD1"),
                    ("x-b3-flags", b"1"),
                ]),
                Some(Incoming {
                    format: Format::B3Multi,
                    parent: parent(t128, s),
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "multi, a decision alone",
                headers(&[("x-b3-sampled", b"1")]),
                Some(Incoming {
                    format: Format::B3Multi,
                    parent: None,
                    sampled: Some(true),
                    trace_state: None,
                }),
            ),
            (
                "a bad single header falls back to multi",
                headers(&[
                    ("b3", b"nonsense"),
                    ("x-b3-traceid", b"64fe8b2a57d3eff7"),
                    ("x-b3-spanid", b"e457b5a2e4d86bd1"),
                ]),
                Some(Incoming {
                    format: Format::B3Multi,
                    parent: parent(0x64fe_8b2a_57d3_eff7, s),
                    sampled: None,
                    trace_state: None,
                }),
            ),
        ];
        for (why, h, want) in cases {
            assert_eq!(extract(&h), want, "{why}");
        }
    }

    #[test]
    fn invalid_and_hostile_headers_are_ignored() {
        let long = "0".repeat(100_000);
        let state = format!("{},k=v", "a=b,".repeat(40));
        let cases: Vec<(&str, Headers<'_>)> = vec![
            ("nothing", vec![]),
            (
                "traceparent too short",
                vec![("traceparent", b"00-4bf9-00f0-01")],
            ),
            (
                "version 00 with a suffix",
                vec![(
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                )],
            ),
            (
                "version ff",
                vec![(
                    "traceparent",
                    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
            ),
            (
                "upper case",
                vec![(
                    "traceparent",
                    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                )],
            ),
            (
                "zero trace id",
                vec![(
                    "traceparent",
                    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                )],
            ),
            (
                "zero span id",
                vec![(
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                )],
            ),
            (
                "wrong separators",
                vec![(
                    "traceparent",
                    b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                )],
            ),
            (
                "not hex",
                vec![(
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
                )],
            ),
            (
                "a sign inside the id",
                vec![(
                    "traceparent",
                    b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
            ),
            (
                "two traceparents",
                vec![
                    (
                        "traceparent",
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    ),
                    (
                        "traceparent",
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01",
                    ),
                ],
            ),
            (
                "non-ASCII bytes",
                vec![(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1".as_bytes(),
                )],
            ),
            ("huge", vec![("traceparent", long.as_bytes())]),
            ("huge b3", vec![("b3", long.as_bytes())]),
            ("b3 empty", vec![("b3", b"")]),
            ("b3 dashes", vec![("b3", b"---")]),
            (
                "b3 bad sampling",
                vec![("b3", b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-x")],
            ),
            (
                "b3 too many parts",
                vec![(
                    "b3",
                    b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-extra",
                )],
            ),
            ("b3 short span", vec![("b3", b"64fe8b2a57d3eff7-e457b5a2")]),
            (
                "b3 zero trace",
                vec![("b3", b"0000000000000000-e457b5a2e4d86bd1-1")],
            ),
            (
                "multi without span id",
                vec![("x-b3-traceid", b"64fe8b2a57d3eff7")],
            ),
            (
                "multi with a bad span id",
                vec![
                    ("x-b3-traceid", b"64fe8b2a57d3eff7"),
                    ("x-b3-spanid", b"zzzzzzzzzzzzzzzz"),
                ],
            ),
            ("multi, unknown sampled", vec![("x-b3-sampled", b"maybe")]),
        ];
        for (why, pairs) in cases {
            assert_eq!(extract(&headers(&pairs)), None, "{why}");
        }
        // A tracestate past W3C's bounds is dropped; the parent stays.
        for state in [state.as_str(), &format!("k={}", "v".repeat(600))] {
            let h = headers(&[
                (
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", state.as_bytes()),
            ]);
            let got = extract(&h).unwrap();
            assert_eq!(got.trace_state, None);
            assert_eq!(got.parent, parent(TRACE, SPAN));
        }
    }

    fn get(h: &HeaderMap, name: &str) -> Option<String> {
        h.get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn injection_names_this_span_in_both_forms() {
        let mut h = headers(&[
            ("b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("x-b3-flags", b"1"),
            ("x-b3-parentspanid", b"05e3ac9a4f6e3b90"),
            ("tracestate", b"old=1"),
            ("x-request-id", b"kept"),
        ]);
        inject(
            &mut h,
            &Outgoing {
                trace_id: TRACE,
                span_id: 0x1111_2222_3333_4444,
                parent_span_id: Some(SPAN),
                sampled: true,
                trace_state: Some("congo=t61rcWkgMzE".into()),
                b3: true,
            },
        );
        assert_eq!(
            get(&h, "traceparent").as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-1111222233334444-01")
        );
        assert_eq!(get(&h, "tracestate").as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(
            get(&h, "x-b3-traceid").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(get(&h, "x-b3-spanid").as_deref(), Some("1111222233334444"));
        assert_eq!(
            get(&h, "x-b3-parentspanid").as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(get(&h, "x-b3-sampled").as_deref(), Some("1"));
        assert_eq!(get(&h, "b3"), None, "a stale single header goes");
        assert_eq!(get(&h, "x-b3-flags"), None);
        assert_eq!(get(&h, "x-request-id").as_deref(), Some("kept"));

        // What was injected extracts as the same context (the next hop's view).
        let next = extract(&h).unwrap();
        assert_eq!(next.parent, parent(TRACE, 0x1111_2222_3333_4444));
        assert_eq!(next.sampled, Some(true));

        // Unsampled, root: no parent span id, no tracestate.
        inject(
            &mut h,
            &Outgoing {
                trace_id: 7,
                span_id: 9,
                parent_span_id: None,
                sampled: false,
                trace_state: None,
                b3: true,
            },
        );
        assert_eq!(
            get(&h, "traceparent").as_deref(),
            Some("00-00000000000000000000000000000007-0000000000000009-00")
        );
        assert_eq!(get(&h, "x-b3-sampled").as_deref(), Some("0"));
        assert_eq!(get(&h, "x-b3-parentspanid"), None);
        assert_eq!(get(&h, "tracestate"), None);
        h.remove("traceparent");
        let b3_only = extract(&h).unwrap();
        assert_eq!(b3_only.format, Format::B3Multi);
        assert_eq!(b3_only.parent, parent(7, 9));
        assert_eq!(b3_only.sampled, Some(false));

        // A caller that did not speak B3: W3C alone, and no B3 left behind.
        inject(
            &mut h,
            &Outgoing {
                trace_id: 7,
                span_id: 10,
                parent_span_id: None,
                sampled: true,
                trace_state: None,
                b3: false,
            },
        );
        assert_eq!(
            get(&h, "traceparent").as_deref(),
            Some("00-00000000000000000000000000000007-000000000000000a-01")
        );
        for name in ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "b3"] {
            assert_eq!(get(&h, name), None, "{name}");
        }
    }
}
