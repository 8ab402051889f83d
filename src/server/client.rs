//! Who is on the other end of a connection: computed once when it is accepted, and handed to
//! each of its requests.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use super::activity::Activity;
use super::admission::{Address, Ticket};
use crate::config::cidr::{any_contains, Cidr};
use crate::lane::ConnectionShare;
use crate::proxy::{headers, Scheme};

/// The peer of a connection, and how it reached us.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// The peer is in `server.trusted_proxies`.
    pub trusted: bool,
    /// The peer's address as an `X-Forwarded-For` value.
    pub xff: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, scheme: Scheme, trusted_proxies: &[Cidr]) -> Peer {
        Peer {
            addr,
            scheme,
            trusted: any_contains(trusted_proxies, addr.ip()),
            xff: headers::peer_value(addr.ip()),
        }
    }
}

/// One client connection as its requests see it: the peer, what its address may still hold
/// ([`crate::server::admission`]), the connection's share of the body budgets (used by HTTP/2
/// streams, see [`crate::lane`]), and its [`Activity`] (requests mark their bodies arriving).
#[derive(Debug)]
pub struct Client {
    pub peer: Peer,
    pub share: ConnectionShare,
    pub activity: Arc<Activity>,
    ticket: Ticket,
}

impl Client {
    pub fn new(peer: Peer, ticket: Ticket, activity: Arc<Activity>) -> Arc<Client> {
        Arc::new(Client {
            peer,
            share: ConnectionShare::default(),
            activity,
            ticket,
        })
    }

    /// The client's address entry; `None` for a trusted proxy, which nothing is counted
    /// against.
    pub fn address(&self) -> Option<&Arc<Address>> {
        self.ticket.address.as_ref()
    }
}
