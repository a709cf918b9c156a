//! The client side's store of TLS 1.3 session tickets, for configurations that resume sessions
//! ([`super::tls::enable_client_resumption`]).
//!
//! A ticket opens one connection. rustls' own store keeps eight per server, and a sidecar that
//! opens dozens of connections at once to one server (a burst of short connections through it)
//! finds it empty for all but eight: measured, about a third of such connections resumed. This
//! store keeps up to [`TICKETS_PER_SERVER`] tickets for each of at most [`SERVERS`] servers,
//! forgetting the server it heard of first when a new one comes. Each server's newest ticket is
//! used first. TLS 1.2 sessions are not kept.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use parking_lot::Mutex;
use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls_pki_types::ServerName;

/// Tickets kept per server: about the number of connections a client opens to one server at
/// once. A ticket holds a copy of the server's chain, and the ticket itself carries the
/// client's: about 3–5 KiB each.
pub(crate) const TICKETS_PER_SERVER: usize = 32;

/// Servers a store keeps tickets for. A mesh client configuration serves one cluster, whose
/// endpoints share one SNI or are named by address.
pub(crate) const SERVERS: usize = 16;

#[derive(Default)]
pub(crate) struct TicketStore {
    servers: Mutex<Servers>,
}

#[derive(Default)]
struct Servers {
    by_name: HashMap<ServerName<'static>, Server>,
    /// The names in `by_name`, the first heard of first.
    order: VecDeque<ServerName<'static>>,
}

#[derive(Default)]
struct Server {
    /// Oldest first.
    tickets: VecDeque<Tls13ClientSessionValue>,
    /// The key exchange group the server chose last, offered first next time.
    kx_hint: Option<NamedGroup>,
}

impl Servers {
    fn entry(&mut self, name: ServerName<'static>) -> &mut Server {
        if !self.by_name.contains_key(&name) {
            if self.by_name.len() >= SERVERS
                && let Some(first) = self.order.pop_front()
            {
                self.by_name.remove(&first);
            }
            self.order.push_back(name.clone());
        }
        self.by_name.entry(name).or_default()
    }
}

impl TicketStore {
    fn with<T>(&self, f: impl FnOnce(&mut Servers) -> T) -> T {
        f(&mut self.servers.lock())
    }
}

impl fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (servers, tickets) = self.with(|s| {
            let tickets: usize = s.by_name.values().map(|server| server.tickets.len()).sum();
            (s.by_name.len(), tickets)
        });
        f.debug_struct("TicketStore")
            .field("servers", &servers)
            .field("tickets", &tickets)
            .finish()
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|s| s.entry(server_name).kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let name = server_name.to_owned();
        self.with(|s| s.by_name.get(&name).and_then(|server| server.kx_hint))
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with(|s| {
            let tickets = &mut s.entry(server_name).tickets;
            if tickets.len() >= TICKETS_PER_SERVER {
                tickets.pop_front();
            }
            tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with(|s| s.by_name.get_mut(server_name)?.tickets.pop_back())
    }
}
