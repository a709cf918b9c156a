//! What the DNS proxy says to one query, as a pure function of the query, the name table and
//! the search domains (no I/O): an answer of its own for the mesh's names, or "forward it".
//!
//! - A and AAAA of a name in the table: its addresses of that family (none: an empty answer,
//!   NOERROR, since the name exists). Other types (SRV, TXT, ...) are forwarded, as Istio does.
//! - A name the table lacks that is a short name with the first search domain appended (what
//!   a resolver sends first: `ratings.bookinfo.shop.svc.cluster.local` for
//!   `ratings.bookinfo`), or a short name itself (`ratings.bookinfo`): if the short name with
//!   a search domain, or as a whole name, is in the table, a CNAME to that name and its
//!   addresses, so the application's resolver stops at its first try instead of walking its
//!   search list through the upstream server.
//! - Everything else, and classes other than IN, is forwarded.
//! - A query that is not one standard question gets FORMERR or NOTIMP; a response is ignored.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::dns::NameIndex;

/// The TTL of the proxy's own answers (seconds; Istio's DNS proxy uses 30 too).
pub const TTL: u32 = 30;

/// What to do with a query.
#[derive(Debug)]
pub enum Decision {
    /// Reply with this message.
    Reply(Message),
    /// Not a mesh name: send the query, as it came, to the pod's own resolvers.
    Forward,
    /// Say nothing (a response sent to the proxy, or bytes that are no message at all).
    Drop,
}

/// The reply to `bytes` that could not be parsed: FORMERR with the query's id when the
/// header is there, else nothing.
pub fn malformed(bytes: &[u8]) -> Decision {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Decision::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    Decision::Reply(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr))
}

pub fn decide(query: &Message, table: &NameIndex, search: &[String]) -> Decision {
    if query.message_type() != MessageType::Query {
        return Decision::Drop;
    }
    if query.op_code() != OpCode::Query {
        return Decision::Reply(reply_to(query, ResponseCode::NotImp));
    }
    let [question] = query.queries() else {
        return Decision::Reply(reply_to(query, ResponseCode::FormErr));
    };
    if question.query_class() != DNSClass::IN
        || !matches!(question.query_type(), RecordType::A | RecordType::AAAA)
    {
        return Decision::Forward;
    }
    let asked = name_text(question.name());
    let (found, ips) = match table.get(&asked) {
        Some(ips) => (None, ips),
        None => match expand(&asked, table, search) {
            Some((name, ips)) => (Some(name), ips),
            None => return Decision::Forward,
        },
    };
    let mut reply = reply_to(query, ResponseCode::NoError);
    reply.set_authoritative(true);
    let mut owner = question.name().clone();
    if let Some(target) = found
        && let Ok(target) = Name::from_ascii(format!("{target}."))
    {
        reply.add_answer(Record::from_rdata(
            owner.clone(),
            TTL,
            RData::CNAME(CNAME(target.clone())),
        ));
        owner = target;
    }
    for ip in ips {
        let data = match (question.query_type(), ip) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(owner.clone(), TTL, data));
    }
    Decision::Reply(reply)
}

/// A reply to `query` with `code`: its id, question and RD bit; recursion available.
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    reply.add_queries(query.queries().iter().cloned());
    reply
}

/// Lowercase, without the trailing dot: how the table keys names.
fn name_text(name: &Name) -> String {
    let mut text = name.to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text.to_ascii_lowercase()
}

/// The table entry a short name stands for: `asked` with the first search domain removed (if
/// it ends with it) or as it is, then each search domain appended in turn. Only the first: a
/// resolver appends it first, and a name that ends with a later one (`x.cluster.local`) may
/// well be meant as written.
fn expand<'a>(
    asked: &str,
    table: &'a NameIndex,
    search: &[String],
) -> Option<(String, &'a [IpAddr])> {
    let stripped = search.first().and_then(|domain| {
        asked
            .strip_suffix(domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|rest| !rest.is_empty())
    });
    let short = stripped.unwrap_or(asked);
    let with_domains = search.iter().map(|domain| format!("{short}.{domain}"));
    // Last, the short name as a whole name (a resolver's last try): a search domain appended
    // to a whole mesh name (`ratings.bookinfo.svc.green-imports.local.shop.svc.cluster.local`)
    // is answered as that name rather than sent upstream, where only an NXDOMAIN would keep
    // the resolver walking its list.
    let whole = stripped.map(str::to_owned);
    with_domains
        .chain(whole)
        .filter(|candidate| candidate != asked)
        .find_map(|candidate| table.get(&candidate).map(|ips| (candidate, ips)))
}

/// A query for tests and benches: `name` of `kind`, recursion desired.
pub fn query(id: u16, name: &str, kind: RecordType) -> Message {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    if let Ok(name) = Name::from_ascii(name) {
        message.add_query(Query::query(name, kind));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> NameIndex {
        let mut index = NameIndex::default();
        for (name, ips) in [
            (
                "ratings.bookinfo.svc.green-imports.local",
                vec!["240.240.3.4"],
            ),
            (
                "reviews.bookinfo.svc.cluster.local",
                vec!["10.96.0.9", "fd00::9"],
            ),
            ("db.example.com", vec!["240.240.0.1"]),
        ] {
            index.names.insert(
                name.to_owned(),
                ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            );
        }
        index
    }

    fn search() -> Vec<String> {
        [
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn answers(decision: &Decision) -> (ResponseCode, Vec<String>) {
        let Decision::Reply(reply) = decision else {
            panic!("expected a reply, got {decision:?}");
        };
        let records = reply
            .answers()
            .iter()
            .map(|r| format!("{} {}", r.name(), r.data()))
            .collect();
        (reply.response_code(), records)
    }

    #[test]
    fn mesh_names_are_answered_with_their_addresses_of_the_family_asked() {
        let t = table();
        let a = decide(
            &query(
                1,
                "Ratings.Bookinfo.svc.green-imports.local.",
                RecordType::A,
            ),
            &t,
            &search(),
        );
        assert_eq!(
            answers(&a),
            (
                ResponseCode::NoError,
                vec!["Ratings.Bookinfo.svc.green-imports.local. 240.240.3.4".to_owned()]
            )
        );
        let aaaa = decide(
            &query(2, "reviews.bookinfo.svc.cluster.local.", RecordType::AAAA),
            &t,
            &search(),
        );
        assert_eq!(
            answers(&aaaa).1,
            ["reviews.bookinfo.svc.cluster.local. fd00::9"]
        );
        // The name exists: no IPv6 address is an empty answer, not NXDOMAIN.
        let none = decide(
            &query(3, "db.example.com.", RecordType::AAAA),
            &t,
            &search(),
        );
        assert_eq!(answers(&none), (ResponseCode::NoError, vec![]));
        // Other types are the upstream's to answer (SRV, TXT of a host).
        let txt = decide(&query(4, "db.example.com.", RecordType::TXT), &t, &search());
        assert!(matches!(txt, Decision::Forward));
    }

    #[test]
    fn short_names_resolve_through_the_search_domains_with_a_cname() {
        let t = table();
        // What glibc sends first for `reviews.bookinfo` with ndots:5.
        let first_try = decide(
            &query(1, "reviews.bookinfo.shop.svc.cluster.local.", RecordType::A),
            &t,
            &search(),
        );
        assert_eq!(
            answers(&first_try).1,
            [
                "reviews.bookinfo.shop.svc.cluster.local. reviews.bookinfo.svc.cluster.local.",
                "reviews.bookinfo.svc.cluster.local. 10.96.0.9"
            ]
        );
        // A whole mesh name with a search domain appended (ndots:5 tries those first).
        let appended = decide(
            &query(5, "db.example.com.shop.svc.cluster.local.", RecordType::A),
            &t,
            &search(),
        );
        assert_eq!(
            answers(&appended).1,
            [
                "db.example.com.shop.svc.cluster.local. db.example.com.",
                "db.example.com. 240.240.0.1"
            ]
        );
        // A later search domain is taken as written: forwarded.
        for name in ["db.example.com.cluster.local.", "reviews.cluster.local."] {
            assert!(
                matches!(
                    decide(&query(6, name, RecordType::A), &t, &search()),
                    Decision::Forward
                ),
                "{name}"
            );
        }
        // The short name itself, as a resolver with a low ndots sends it.
        let short = decide(&query(2, "reviews.bookinfo.", RecordType::A), &t, &search());
        assert_eq!(answers(&short).1.len(), 2);
        // Not a mesh name, with or without a search domain: forwarded.
        for name in [
            "www.example.org.",
            "www.example.org.shop.svc.cluster.local.",
            "shop.svc.cluster.local.",
        ] {
            assert!(
                matches!(
                    decide(&query(3, name, RecordType::A), &t, &search()),
                    Decision::Forward
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn odd_queries_get_clean_errors_and_responses_are_ignored() {
        let t = table();
        let mut two = query(1, "db.example.com.", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        assert_eq!(answers(&decide(&two, &t, &[])).0, ResponseCode::FormErr);
        let mut update = query(2, "db.example.com.", RecordType::A);
        update.set_op_code(OpCode::Update);
        assert_eq!(answers(&decide(&update, &t, &[])).0, ResponseCode::NotImp);
        let mut response = query(3, "db.example.com.", RecordType::A);
        response.set_message_type(MessageType::Response);
        assert!(matches!(decide(&response, &t, &[]), Decision::Drop));
        let mut chaos = query(4, "db.example.com.", RecordType::A);
        chaos.queries_mut()[0].set_query_class(DNSClass::CH);
        assert!(matches!(decide(&chaos, &t, &[]), Decision::Forward));
        // Unparseable bytes: FORMERR with the id when there is a header, else silence.
        let Decision::Reply(formerr) =
            malformed(&[0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff])
        else {
            panic!("a header deserves an answer");
        };
        assert_eq!(
            (formerr.id(), formerr.response_code()),
            (0x1234, ResponseCode::FormErr)
        );
        assert!(matches!(malformed(&[1, 2, 3]), Decision::Drop));
    }
}
