//! A listener filter's `filter_disabled`: Envoy's `ListenerFilterChainMatchPredicate`, which
//! says on which connections the filter does not run. Its rules (`or_match`, `and_match`,
//! `not_match`, `any_match`, `destination_port_range`) all ask about the destination port,
//! so the model is a predicate on the port.

use isthmus_proto::envoy::envoy::config::listener::v3::ListenerFilterChainMatchPredicate as Envoy;
use isthmus_proto::envoy::envoy::config::listener::v3::listener_filter_chain_match_predicate::Rule;

use super::check::{Checked, Invalid, Path};

/// Envoy's predicate on a connection's destination port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPredicate {
    Any,
    /// `[start, end)`, as Envoy's `Int32Range`.
    Range(u16, u32),
    Not(Box<PortPredicate>),
    All(Vec<PortPredicate>),
    OneOf(Vec<PortPredicate>),
}

/// The deepest nesting accepted (the root is level 0) and the most rules in one set: a
/// predicate is a handful of rules, and a bigger one is refused instead of walked.
const MAX_DEPTH: usize = 16;
const MAX_RULES: usize = 256;

impl PortPredicate {
    pub fn matches(&self, port: u16) -> bool {
        match self {
            PortPredicate::Any => true,
            PortPredicate::Range(start, end) => *start <= port && u32::from(port) < *end,
            PortPredicate::Not(p) => !p.matches(port),
            PortPredicate::All(ps) => ps.iter().all(|p| p.matches(port)),
            PortPredicate::OneOf(ps) => ps.iter().any(|p| p.matches(port)),
        }
    }
}

pub fn port_predicate(p: Envoy, path: &Path) -> Checked<PortPredicate> {
    predicate(p, path, 0)
}

fn predicate(p: Envoy, path: &Path, depth: usize) -> Checked<PortPredicate> {
    if depth >= MAX_DEPTH {
        return Err(Invalid::new(
            path,
            format!("nested {MAX_DEPTH} levels deep or more"),
        ));
    }
    let set = |rules: Vec<Envoy>, field: &str| -> Checked<Vec<PortPredicate>> {
        if rules.len() < 2 || rules.len() > MAX_RULES {
            return Err(Invalid::new(
                &path.field(field).field("rules"),
                format!("between 2 and {MAX_RULES} rules are required"),
            ));
        }
        rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| predicate(r, &path.field(field).field("rules").index(i), depth + 1))
            .collect()
    };
    Ok(match p.rule {
        None => return Err(Invalid::required(&path.field("rule"))),
        Some(Rule::AnyMatch(any)) => {
            if !any {
                return Err(Invalid::new(
                    &path.field("any_match"),
                    "must be true when set",
                ));
            }
            PortPredicate::Any
        }
        Some(Rule::DestinationPortRange(range)) => {
            let path = path.field("destination_port_range");
            let start = u16::try_from(range.start)
                .map_err(|_| Invalid::new(&path.field("start"), "not a port"))?;
            let end = u32::try_from(range.end)
                .ok()
                .filter(|end| *end > u32::from(start) && *end <= 65_536)
                .ok_or_else(|| {
                    Invalid::new(&path.field("end"), "must be above start, at most 65536")
                })?;
            PortPredicate::Range(start, end)
        }
        Some(Rule::NotMatch(inner)) => PortPredicate::Not(Box::new(predicate(
            *inner,
            &path.field("not_match"),
            depth + 1,
        )?)),
        Some(Rule::AndMatch(set_of)) => PortPredicate::All(set(set_of.rules, "and_match")?),
        Some(Rule::OrMatch(set_of)) => PortPredicate::OneOf(set(set_of.rules, "or_match")?),
    })
}
