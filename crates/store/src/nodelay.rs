//! TCP_NODELAY on this process's PostgreSQL connections.
//!
//! sqlx 0.9.0 stopped disabling Nagle's algorithm on its sockets (upstream issue
//! transact-rs/sqlx#4335, fixed by #4336 after the 0.9.0 release). A message longer than one
//! segment, such as a batch of audit rows, then leaves its tail waiting for the server's
//! delayed ACK: about 40 ms per statement. On loopback that cut audited requests on PostgreSQL
//! from about 16k/s (over a Unix socket, which has no Nagle) to about 1.5k/s.
//!
//! sqlx gives no access to its socket, so after each new connection this sets the option on
//! every TCP socket of the process whose peer is one of the database's addresses. It reaches
//! those sockets through a duplicate of their descriptor (`pidfd_getfd` on this process), which
//! needs no `unsafe` and leaves the originals untouched. Remove it once sqlx sets the option
//! itself.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Sets TCP_NODELAY on every TCP socket of this process connected to one of `peers`; returns
/// how many sockets it changed. A socket that refuses is skipped. Fails only when this
/// process's descriptors cannot be read or duplicated (an old kernel, or a seccomp profile that
/// refuses `pidfd_getfd`).
pub fn set_on_connections_to(peers: &[SocketAddr]) -> std::io::Result<usize> {
    let mut changed = 0;
    for fd in tcp_sockets_to(peers)? {
        if rustix::net::sockopt::tcp_nodelay(&fd).is_ok_and(|on| !on)
            && rustix::net::sockopt::set_tcp_nodelay(&fd, true).is_ok()
        {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Duplicates of this process's TCP sockets whose peer is one of `peers`.
pub fn tcp_sockets_to(peers: &[SocketAddr]) -> std::io::Result<Vec<OwnedFd>> {
    let me = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Only sockets: the link of a socket's descriptor reads `socket:[inode]`.
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        });
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed since the directory was read.
        let Ok(fd) =
            rustix::process::pidfd_getfd(&me, number, rustix::process::PidfdGetfdFlags::empty())
        else {
            continue;
        };
        if is_tcp_to(&fd, peers) {
            found.push(fd);
        }
    }
    Ok(found)
}

fn is_tcp_to(fd: &OwnedFd, peers: &[SocketAddr]) -> bool {
    let tcp = rustix::net::sockopt::socket_protocol(fd)
        .is_ok_and(|p| p == Some(rustix::net::ipproto::TCP));
    let peer = rustix::net::getpeername(fd)
        .ok()
        .flatten()
        .and_then(|addr| SocketAddr::try_from(addr).ok());
    tcp && peer.is_some_and(|p| peers.contains(&p))
}
