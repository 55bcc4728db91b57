//! The DNS forwarder (`blocker run --dns-port PORT`): the cgroup's DNS, as the application
//! sends it, and the addresses of the answers put into the tables before the application sees
//! them.
//!
//! The `sock_addr` programs send every allowed IPv4 call to port 53 (UDP and TCP) to
//! `127.0.0.1:PORT` and keep the resolver it named under the socket's cookie
//! (`cgroup_connect_common::dns`). For each query the forwarder finds the cookie of the socket
//! it came from (`NETLINK_SOCK_DIAG`, [`socket_cookie`]), reads the resolver, sends the query
//! there, and hands the answer's name chain and addresses to the serving loop ([`Learn`]),
//! which puts them into the tables ([`crate::resolve::Names::learn`], then a swap) and says when
//! they are in force. Only then does the answer go back. An answer whose addresses could not be
//! put in force is dropped: the caller's resolver times out (fails closed).
//!
//! A query from a socket the programs did not redirect (no cookie entry: a process that
//! connected to the forwarder's port itself) is dropped.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use cgroup_connect_common::dns::Origin;

use crate::learned::{FastPath, Outcome};
use hickory_proto::{
    op::Message,
    rr::{RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, mpsc, oneshot},
};

/// How long the forwarder waits for a resolver's answer, or for the next query on a TCP
/// connection.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// IP protocol numbers, as `NETLINK_SOCK_DIAG` takes them.
const UDP: u8 = 17;
const TCP: u8 = 6;
/// Largest DNS message (TCP's 16-bit length).
const MAX_MESSAGE: usize = 65_535;
/// UDP queries the forwarder answers at once; more are dropped (the client asks again). Each
/// holds a socket for up to [`UPSTREAM_TIMEOUT`]: unbounded, a process of the cgroup sending
/// queries to a resolver that never answers would run the blocker out of file descriptors.
const MAX_UDP_IN_FLIGHT: usize = 256;
/// TCP connections the forwarder relays at once; more are closed. Bounded for the same reason.
const MAX_TCP_IN_FLIGHT: usize = 64;

/// An answer for the serving loop: the name asked and the CNAME targets it led to, and the A
/// and AAAA records at its end with their TTLs. `done`, when the answer waits, says whether
/// the addresses are in force; an answer passed on already had its new addresses put in the
/// fast path's map (`written`, to fold into the tables).
pub struct Learn {
    pub chain: Vec<String>,
    pub addrs: Vec<(IpAddr, u32)>,
    pub done: Option<oneshot::Sender<bool>>,
    pub written: Vec<(IpAddr, u64)>,
}

/// The fast path, shared by the forwarder's tasks and the serving loop, with the grace period
/// of learned addresses.
#[derive(Clone)]
pub struct Fast {
    pub path: Arc<Mutex<FastPath>>,
    pub grace: Duration,
}

/// The forwarder's sockets, bound before the programs send anything to them.
pub struct Forwarder {
    udp: UdpSocket,
    tcp: TcpListener,
    port: u16,
}

/// The resolvers of the redirected sockets, by cookie (the pinned `dns_origins` map).
type Origins = Arc<Mutex<HashMap<MapData, u64, Origin>>>;

impl Forwarder {
    /// Binds UDP and TCP `127.0.0.1:port`.
    ///
    /// # Errors
    /// A port in use, or no permission to bind it.
    pub async fn bind(port: u16) -> io::Result<Self> {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        Ok(Self { udp: UdpSocket::bind(addr).await?, tcp: TcpListener::bind(addr).await?, port })
    }

    /// The port bound.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves queries until the runtime ends, reading resolvers from the map pinned at
    /// `origins` and sending answers to learn on `learn`.
    ///
    /// # Errors
    /// The map cannot be opened.
    pub fn spawn(
        self,
        origins: &Path,
        learn: mpsc::Sender<Learn>,
        fast: Option<Fast>,
    ) -> anyhow::Result<()> {
        let data = MapData::from_pin(origins)?;
        let map: HashMap<MapData, u64, Origin> = HashMap::try_from(Map::LruHashMap(data))?;
        let origins: Origins = Arc::new(Mutex::new(map));
        let (udp, tcp, port) = (self.udp.into_std()?, self.tcp.into_std()?, self.port);
        // A thread of its own: the serving loop's swaps (tens of milliseconds of work on its
        // thread) must not hold up the answers.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("dns-forwarder".into()).spawn(move || {
            runtime.block_on(async move {
                let sockets =
                    UdpSocket::from_std(udp).and_then(|u| Ok((u, TcpListener::from_std(tcp)?)));
                let (udp, tcp) = match sockets {
                    Ok(sockets) => sockets,
                    Err(e) => {
                        tracing::error!("DNS forwarder: its sockets: {e}; the cgroup's DNS fails");
                        return;
                    }
                };
                tokio::join!(
                    serve_udp(Arc::new(udp), port, origins.clone(), learn.clone(), fast.clone()),
                    serve_tcp(tcp, port, origins, learn, fast),
                );
            });
        })?;
        Ok(())
    }
}

/// The resolver the socket at `client` sent its query to, if the programs redirected it.
fn origin_of(origins: &Origins, protocol: u8, client: SocketAddr, port: u16) -> Option<SocketAddr> {
    let SocketAddr::V4(client) = client else { return None };
    let cookie = socket_cookie(protocol, client, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .inspect_err(|e| tracing::debug!("no socket for DNS query from {client}: {e}"))
        .ok()?;
    let origin = origins.lock().ok()?.get(&cookie, 0).ok()?;
    #[expect(clippy::cast_possible_truncation, reason = "a port number")]
    Some(SocketAddr::from((Ipv4Addr::from(origin.addr), origin.port as u16)))
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    port: u16,
    origins: Origins,
    learn: mpsc::Sender<Learn>,
    fast: Option<Fast>,
) {
    let mut buf = vec![0; MAX_MESSAGE];
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!("DNS forwarder: receiving failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tracing::debug!(
                "DNS forwarder: {MAX_UDP_IN_FLIGHT} UDP queries in flight, one dropped"
            );
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, origins, learn, fast) =
            (socket.clone(), origins.clone(), learn.clone(), fast.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(resolver) = origin_of(&origins, UDP, client, port) else {
                return;
            };
            let answer = match ask_udp(resolver, &query).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!("DNS forwarder: {resolver}: {e}");
                    return;
                }
            };
            if in_force(&answer, &learn, fast.as_ref()).await {
                let _ = socket.send_to(&answer, client).await;
            }
        });
    }
}

async fn ask_udp(resolver: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let upstream = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    upstream.connect(resolver).await?;
    upstream.send(query).await?;
    let mut buf = vec![0; MAX_MESSAGE];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    // Bounded by the deadline: a datagram whose ID is not the query's is skipped.
    loop {
        let len = tokio::time::timeout_at(deadline, upstream.recv(&mut buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if len >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    port: u16,
    origins: Origins,
    learn: mpsc::Sender<Learn>,
    fast: Option<Fast>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_TCP_IN_FLIGHT));
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tracing::debug!("DNS forwarder: {MAX_TCP_IN_FLIGHT} TCP connections open, one closed");
            continue;
        };
        let (origins, learn, fast) = (origins.clone(), learn.clone(), fast.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(resolver) = origin_of(&origins, TCP, peer, port) else {
                return;
            };
            if let Err(e) = relay_tcp(client, resolver, &learn, fast.as_ref()).await {
                tracing::debug!("DNS forwarder: TCP {resolver}: {e}");
            }
        });
    }
}

/// Relays length-prefixed messages, each answer once its addresses are in force.
async fn relay_tcp(
    mut client: TcpStream,
    resolver: SocketAddr,
    learn: &mpsc::Sender<Learn>,
    fast: Option<&Fast>,
) -> io::Result<()> {
    let timeout = |e: tokio::time::error::Elapsed| io::Error::new(io::ErrorKind::TimedOut, e);
    let mut upstream = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(resolver))
        .await
        .map_err(timeout)??;
    // Bounded: each turn waits at most UPSTREAM_TIMEOUT for the client.
    loop {
        let Ok(query) = tokio::time::timeout(UPSTREAM_TIMEOUT, read_framed(&mut client)).await
        else {
            return Ok(());
        };
        let Some(query) = query? else { return Ok(()) };
        write_framed(&mut upstream, &query).await?;
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, read_framed(&mut upstream))
            .await
            .map_err(timeout)??
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if !in_force(&answer, learn, fast).await {
            return Ok(());
        }
        write_framed(&mut client, &answer).await?;
    }
}

async fn read_framed(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len =
        u16::try_from(message.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Puts the answer's addresses in force; true when the answer may go back: it has none, or
/// they are in force. A message that does not parse goes back as it is: it names no address
/// the caller could use. With the fast path, new addresses go into its map here (or, where
/// it cannot take them, the answer waits for a swap); the serving loop learns the answer after.
async fn in_force(answer: &[u8], learn: &mpsc::Sender<Learn>, fast: Option<&Fast>) -> bool {
    let Some((chain, addrs)) = answer_chain(answer) else { return true };
    if addrs.is_empty() {
        return true;
    }
    if let Some(fast) = fast {
        let outcome = match fast.path.lock() {
            Ok(mut path) => path.learn(&chain, &addrs, fast.grace),
            Err(_) => Outcome::Slow(Vec::new()),
        };
        let written = match outcome {
            Outcome::Known => Vec::new(),
            Outcome::Written(written) => written,
            Outcome::Slow(written) => return wait_for_swap(chain, addrs, written, learn).await,
        };
        // In force already: the serving loop extends the names' time, folds new addresses
        // into the tables and keeps them in the state. Its channel closed means the
        // blocker is stopping.
        return learn.send(Learn { chain, addrs, done: None, written }).await.is_ok();
    }
    wait_for_swap(chain, addrs, Vec::new(), learn).await
}

/// Hands an answer to the serving loop and waits until its addresses are in force (and the
/// fast path's `written`, if any, taken out of its map).
async fn wait_for_swap(
    chain: Vec<String>,
    addrs: Vec<(IpAddr, u32)>,
    written: Vec<(IpAddr, u64)>,
    learn: &mpsc::Sender<Learn>,
) -> bool {
    let (done, in_force) = oneshot::channel();
    let answer = Learn { chain, addrs, done: Some(done), written };
    if learn.send(answer).await.is_err() {
        return false;
    }
    in_force.await.unwrap_or(false)
}

/// An answer as the rules see it: the name asked and the CNAME targets it led to, and the
/// addresses at the chain's names with their TTLs (seconds).
pub type Chain = (Vec<String>, Vec<(IpAddr, u32)>);

/// The name asked and the CNAME targets it led to (in order, lowercase, without the root's
/// dot), and the A and AAAA records at the chain's names with their TTLs; `None` for a message
/// that does not parse or asks nothing.
#[must_use]
pub fn answer_chain(answer: &[u8]) -> Option<Chain> {
    let message = Message::from_vec(answer).ok()?;
    let asked = message.queries.first()?;
    if !matches!(asked.query_type, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        return Some((Vec::new(), Vec::new()));
    }
    let plain =
        |name: &hickory_proto::rr::Name| name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut chain = vec![plain(&asked.name)];
    // Bounded by the answer count: each step follows one CNAME record.
    for _ in 0..message.answers.len() {
        let Some(last) = chain.last() else { break };
        let next = message.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if plain(&r.name) == *last => Some(plain(&target.0)),
            _ => None,
        });
        match next {
            Some(next) if !chain.contains(&next) => chain.push(next),
            _ => break,
        }
    }
    let addrs = message
        .answers
        .iter()
        .filter(|r| chain.contains(&plain(&r.name)))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect();
    Some((chain, addrs))
}

/// `struct inet_diag_sockid` (`linux/inet_diag.h`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` and `struct inet_diag_req_v2`.
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `SOCK_DIAG_BY_FAMILY`, `NLM_F_REQUEST`, `NLMSG_ERROR`, `AF_INET`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const AF_INET: u8 = 2;
#[expect(clippy::cast_possible_truncation, reason = "88 bytes")]
const REQUEST_LEN: u32 = size_of::<Request>() as u32;
/// Offset of `inet_diag_msg.id.idiag_cookie` in a reply: the 16-byte netlink header, 4 bytes
/// of family, state, timer and retransmits, then the socket id up to its cookie.
const REPLY_COOKIE: usize = 16 + 4 + 2 + 2 + 16 + 16 + 4;

/// The cookie of this network namespace's `protocol` socket (TCP or UDP) whose local address
/// is `client` and whose peer (or, for an unconnected UDP socket, the sender of a datagram to
/// it) is `server`, as `bpf_get_socket_cookie` gives it.
///
/// # Errors
/// No such socket, or the kernel refuses the query.
pub fn socket_cookie(protocol: u8, client: SocketAddrV4, server: SocketAddrV4) -> io::Result<u64> {
    let be = |a: &SocketAddrV4| (u32::from(*a.ip()).to_be(), a.port().to_be_bytes());
    let ((local, local_port), (remote, remote_port)) = (be(&client), be(&server));
    // The kernel's UDP lookup takes the id as a received datagram's (source, destination),
    // TCP's as the socket's own (local, remote) (net/ipv4/udp_diag.c: "swapped for historical
    // reasons").
    let (src, sport, dst, dport) = if protocol == UDP {
        (remote, remote_port, local, local_port)
    } else {
        (local, local_port, remote, remote_port)
    };
    let request = Request {
        len: REQUEST_LEN,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: NLM_F_REQUEST,
        seq: 1,
        pid: 0,
        family: AF_INET,
        protocol,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        id: SockId {
            sport,
            dport,
            src: [src, 0, 0, 0],
            dst: [dst, 0, 0, 0],
            ifindex: 0,
            // INET_DIAG_NOCOOKIE: match by address only.
            cookie: [u32::MAX; 2],
        },
    };
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just made and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sends the request's bytes, which live through the call.
    let sent =
        unsafe { libc::send(fd.as_raw_fd(), (&raw const request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 512];
    // SAFETY: receives into the buffer, of its length.
    let got = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if got < 20 || kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        return Err(io::Error::from_raw_os_error(errno.saturating_neg().max(1)));
    }
    if kind != SOCK_DIAG_BY_FAMILY || got < REPLY_COOKIE + 8 {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    let word = |at: usize| {
        u64::from(u32::from_ne_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]]))
    };
    Ok(word(REPLY_COOKIE) | word(REPLY_COOKIE + 4) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cookie_of_a_udp_and_a_tcp_socket() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (SocketAddr::V4(s), SocketAddr::V4(c)) =
            (server.local_addr().unwrap(), client.local_addr().unwrap())
        else {
            unreachable!()
        };
        let udp = socket_cookie(UDP, c, s).unwrap();
        let own = |fd: i32| {
            let mut cookie = 0u64;
            let mut len = 8u32;
            // SAFETY: SO_COOKIE writes a u64 into the buffer given.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_COOKIE,
                    (&raw mut cookie).cast(),
                    &raw mut len,
                )
            };
            assert_eq!(rc, 0);
            cookie
        };
        assert_eq!(udp, own(client.as_raw_fd()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (SocketAddr::V4(s), SocketAddr::V4(c)) =
            (listener.local_addr().unwrap(), stream.local_addr().unwrap())
        else {
            unreachable!()
        };
        let tcp = socket_cookie(TCP, c, s).unwrap();
        assert_eq!(tcp, own(stream.as_raw_fd()));
    }
}
