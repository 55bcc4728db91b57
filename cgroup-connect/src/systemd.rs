//! systemd integration: tells a `Type=notify` service manager when the instance enforces.
/// Tells systemd (`Type=notify`) that the instance enforces, so units ordered after it start
/// only then. Does nothing outside systemd.
pub fn notify_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = socket.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &socket)
    };
    if let Err(e) = sent {
        eprintln!("blocker: warning: telling systemd we are ready failed: {e}");
    }
}
