//! Addresses as other nodes dial them, and accepting connections for a
//! tonic server from a listener we bound ourselves. tonic sets `TCP_NODELAY` only on sockets it accepts itself;
//! without it, a reply written as headers then data waits for the peer's
//! delayed ACK (Nagle), ~40 ms on Linux, on a fraction of unary calls.

use std::io;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// `host:port`, with an IPv6 literal in brackets (as other nodes dial it).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The listener's connections, each with `TCP_NODELAY` set.
pub fn incoming_nodelay(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
