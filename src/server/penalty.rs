//! Clients that break HTTP/2 lose the right to reconnect at once.
//!
//! `h2` already ends a connection whose client breaks the protocol or its
//! limits — a CONTINUATION flood, a rapid-reset flood, oversized headers,
//! malformed frames — with a GOAWAY carrying an error code. An attacker
//! then simply reconnects, and every new connection costs an accept, a task
//! and an HTTP/2 setup before `h2` cuts it off again. [`FrameScan`] follows
//! the frames the server writes on each connection and sees that GOAWAY;
//! [`PeerPenalties`] charges it to the client's address (IPv6: its /64).
//! An address that has run out of its budget — `burst` such errors,
//! refilled one per second — is not served until it is back in budget:
//! its new connections are held unread until then (at most
//! [`MAX_HELD`] at once, each for at most [`MAX_HOLD`]; beyond that they
//! are closed at once) and then closed. Holding matters: a connection
//! closed at once is reopened at once, and an attacker's loop of
//! connect-and-close costs the server as much as the setups it replaced
//! (measured: 20,000 accepts per second); one held is one its sender
//! waits on. Connections the address already has are untouched (they are
//! ended by their own errors, if any), and a well-behaved client is never
//! charged: graceful GOAWAYs (shutdown, `max_connection_age_secs`) carry
//! NO_ERROR.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The address a client is charged under: IPv4 itself, IPv6 by its /64
/// (one host can hold a whole /64).
pub fn peer_key(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Refused connections held unread at once, in all.
pub const MAX_HELD: usize = 256;

/// The longest a refused connection is held.
pub const MAX_HOLD: Duration = Duration::from_secs(10);

/// Addresses tracked at most; past it new addresses are not charged
/// (bounded memory whatever an attacker holds).
const MAX_TRACKED: usize = 100_000;

/// Per address: protocol errors it may still cause before its new
/// connections are refused.
#[derive(Debug)]
pub struct PeerPenalties {
    burst: f64,
    peers: Mutex<HashMap<IpAddr, Budget>>,
}

#[derive(Clone, Copy, Debug)]
struct Budget {
    tokens: f64,
    at: Instant,
}

impl PeerPenalties {
    /// `burst` errors per address, refilled one per second.
    pub fn new(burst: u32) -> Self {
        PeerPenalties {
            burst: f64::from(burst),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Budget, now: Instant) -> Budget {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        Budget {
            tokens: (b.tokens + secs).min(self.burst),
            at: now,
        }
    }

    /// None if a new connection from `peer` may be served, else how long
    /// until it may.
    pub fn refusal(&self, peer: IpAddr) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let b = self.refilled(*peers.get(&peer)?, Instant::now());
        (b.tokens < 1.0).then(|| Duration::from_secs_f64(1.0 - b.tokens))
    }

    /// Whether a new connection from `peer` may be served.
    #[cfg(test)]
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.refusal(peer).is_none()
    }

    /// One connection from `peer` ended in a protocol error. The budget
    /// goes down to `-burst` at most, so an address is refused for
    /// `burst + 1` seconds at most after its last error.
    pub fn charge(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // Full: a new address goes uncharged until the next prune (a scan
        // per charge here would let many addresses buy CPU with errors).
        if peers.len() >= MAX_TRACKED && !peers.contains_key(&peer) {
            metrics::counter!("kinbar_peer_penalties_untracked_total").increment(1);
            return;
        }
        let b = peers.entry(peer).or_insert(Budget {
            tokens: self.burst,
            at: now,
        });
        let mut r = self.refilled(*b, now);
        r.tokens = (r.tokens - 1.0).max(-self.burst);
        *b = r;
    }

    /// Drops addresses whose budget is full again (called now and then).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|_, b| self.refilled(*b, now).tokens < self.burst);
        peers.shrink_to_fit();
    }

    /// How often [`prune`](Self::prune) is worth calling.
    pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
}

/// Follows the HTTP/2 frames a server writes (the plaintext it hands to
/// TCP or TLS: a server sends no preface string, only frames) and reports
/// the first GOAWAY whose error code is not NO_ERROR.
#[derive(Debug, Default)]
pub struct FrameScan {
    /// Header bytes of the current frame collected so far.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    /// For a GOAWAY: its first 8 payload bytes (last stream id, error code).
    goaway: Option<([u8; 8], usize)>,
    /// A GOAWAY with an error was seen; scanning stops.
    pub failed: bool,
}

/// HTTP/2 frame type GOAWAY.
const GOAWAY: u8 = 0x7;

impl FrameScan {
    /// Follows `bytes` (the next written bytes); true if they complete a
    /// GOAWAY with an error code (once: later calls return false).
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() && !self.failed {
            if self.payload_left == 0 && self.goaway.is_none() {
                // In a frame header.
                let take = (9 - self.header_len).min(bytes.len());
                let (now, rest) = bytes.split_at(take);
                self.header[self.header_len..self.header_len + take].copy_from_slice(now);
                self.header_len += take;
                bytes = rest;
                if self.header_len == 9 {
                    self.header_len = 0;
                    let [l0, l1, l2, kind, ..] = self.header;
                    self.payload_left =
                        usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    if kind == GOAWAY && self.payload_left >= 8 {
                        self.goaway = Some(([0; 8], 0));
                    }
                }
                continue;
            }
            if let Some((head, have)) = &mut self.goaway {
                let take = (8 - *have).min(bytes.len());
                let (now, rest) = bytes.split_at(take);
                head[*have..*have + take].copy_from_slice(now);
                *have += take;
                self.payload_left -= take;
                bytes = rest;
                if *have == 8 {
                    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                    self.goaway = None;
                    if code != 0 {
                        self.failed = true;
                        return true;
                    }
                }
                continue;
            }
            let skip = self.payload_left.min(bytes.len());
            self.payload_left -= skip;
            bytes = &bytes[skip..];
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn goaway(code: u32) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 3];
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(b"too_many_continuations");
        frame(GOAWAY, &p)
    }

    /// The stream a server writes: settings, a response, then a GOAWAY.
    fn written(code: u32) -> Vec<u8> {
        let mut w = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        w.extend(frame(0x1, &[0x88; 20]));
        // A DATA frame whose payload looks like a GOAWAY header.
        w.extend(frame(0x0, &goaway(2)));
        w.extend(goaway(code));
        w
    }

    #[test]
    fn an_error_goaway_is_seen_however_the_writes_split() {
        for code in [0u32, 1, 2, 11] {
            let w = written(code);
            for chunk in 1..=w.len() {
                let mut scan = FrameScan::default();
                let seen = w.chunks(chunk).filter(|c| scan.feed(c)).count();
                assert_eq!(
                    seen,
                    usize::from(code != 0),
                    "code {code}, chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn an_address_is_refused_past_its_budget_and_forgiven_in_time() {
        let p = PeerPenalties::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..3 {
            assert!(p.allows(a));
            p.charge(a);
        }
        assert!(!p.allows(a), "three errors spend a budget of three");
        let wait = p.refusal(a).unwrap();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(p.allows(b), "another address is not charged");
        // Refilled one per second.
        {
            let mut peers = p.peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(budget) = peers.get_mut(&a) {
                budget.at -= Duration::from_millis(1_100);
            }
        }
        assert!(p.allows(a), "a second later it may connect again");
        p.prune();
        assert_eq!(
            p.peers.lock().unwrap_or_else(|e| e.into_inner()).len(),
            1,
            "a charged address is remembered until forgiven"
        );
    }

    #[test]
    fn ipv6_hosts_are_charged_by_their_slash_64() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5000"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 16], 0)));
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:6000"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 16], 0)));
        let c: SocketAddr = "[2001:db8:1:3::1]:6000"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 16], 0)));
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let v4: SocketAddr = "[::ffff:10.0.0.1]:1"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 16], 0)));
        assert_eq!(peer_key(v4), IpAddr::from([10, 0, 0, 1]));
    }
}
