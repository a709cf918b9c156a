//! Reading a TLS ClientHello's server name (SNI, RFC 6066) and ALPN protocols (RFC 7301)
//! before choosing a filter chain, as Envoy's TLS inspector does. The bytes read are replayed
//! to the chain (TLS termination or passthrough), so nothing is consumed.

/// The longest ClientHello accepted (Envoy's TLS inspector reads at most 64 KiB; real ones are
/// well under 16 KiB even with post-quantum key shares).
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspect {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS handshake: plaintext.
    NotTls,
    Hello {
        sni: Option<String>,
        alpn: Vec<String>,
    },
    /// A TLS record that is not a well-formed ClientHello.
    Malformed(&'static str),
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Inspects the first bytes of a connection.
pub fn inspect(bytes: &[u8]) -> Inspect {
    let Some(&first) = bytes.first() else {
        return Inspect::Incomplete;
    };
    if first != HANDSHAKE {
        return Inspect::NotTls;
    }
    // The handshake message, reassembled from consecutive handshake records.
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            return Inspect::Incomplete;
        }
        if rest[0] != HANDSHAKE {
            return Inspect::Malformed("a non-handshake record inside the ClientHello");
        }
        if rest[1] != 3 {
            return Inspect::Malformed("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + len {
            return Inspect::Incomplete;
        }
        message.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Inspect::Malformed("the first handshake message is not a ClientHello");
            }
            let body = (usize::from(message[1]) << 16)
                | (usize::from(message[2]) << 8)
                | usize::from(message[3]);
            if body + 4 > MAX_HELLO_BYTES {
                return Inspect::Malformed("ClientHello too large");
            }
            if message.len() >= body + 4 {
                return parse_hello(&message[4..4 + body])
                    .unwrap_or(Inspect::Malformed("truncated ClientHello"));
            }
        }
        if message.len() > MAX_HELLO_BYTES {
            return Inspect::Malformed("ClientHello too large");
        }
    }
}

/// A cursor over the ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn parse_hello(body: &[u8]) -> Option<Inspect> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut sni = None;
    let mut alpn = Vec::new();
    if r.0.is_empty() {
        return Some(Inspect::Hello { sni, alpn });
    }
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.vec16()?);
        match kind {
            EXT_SERVER_NAME => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 {
                        let name = std::str::from_utf8(name).ok()?;
                        sni = Some(name.to_ascii_lowercase());
                    }
                }
            }
            EXT_ALPN => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let proto = list.vec8()?;
                    alpn.push(String::from_utf8_lossy(proto).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(Inspect::Hello { sni, alpn })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello, written by rustls.
    fn hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_client_hello() {
        let bytes = hello("Reviews.Shop.local", &[b"h2", b"http/1.1"]);
        assert_eq!(
            inspect(&bytes),
            Inspect::Hello {
                sni: Some("reviews.shop.local".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            }
        );
        for cut in [0, 1, 4, 5, 40, bytes.len() - 1] {
            assert_eq!(inspect(&bytes[..cut]), Inspect::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn plaintext_and_garbage_are_told_apart() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Inspect::NotTls);
        assert!(matches!(
            inspect(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Inspect::Malformed(_)
        ));
        // A ClientHello whose inner lengths overrun it.
        let mut bytes = hello("a.b", &[]);
        let n = bytes.len();
        bytes[n - 20] = 0xff;
        bytes[n - 19] = 0xff;
        assert!(matches!(
            inspect(&bytes),
            Inspect::Malformed(_) | Inspect::Hello { .. }
        ));
        // Random bytes never panic.
        let mut seed = 7u32;
        for _ in 0..2000 {
            let len = (seed % 300) as usize;
            let mut junk = vec![0x16, 3, 3, 0, 0];
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                junk.push((seed >> 16) as u8);
            }
            let l = junk.len() - 5;
            junk[3] = (l >> 8) as u8;
            junk[4] = l as u8;
            let _ = inspect(&junk);
        }
    }
}
