//! Addresses as other nodes dial them, and accepting connections for a
//! tonic server from a listener we bound ourselves. tonic sets `TCP_NODELAY` only on sockets it accepts itself;
//! without it, a reply written as headers then data waits for the peer's
//! delayed ACK (Nagle), ~40 ms on Linux, on a fraction of unary calls.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// `host:port`, with an IPv6 literal in brackets (as other nodes dial it).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Bytes a connection reads from the socket at once. rustls reads 4 KiB per
/// call, a system call each without this buffer: a quarter of a TLS object
/// transfer's time. Reads larger than this bypass it, so plaintext HTTP/2
/// pays no extra copy.
pub const READ_BUFFER: usize = 256 << 10;

/// A TCP connection whose reads go through a [`READ_BUFFER`] buffer.
pub struct BufferedTcp(tokio::io::BufReader<TcpStream>);

impl BufferedTcp {
    /// Buffers `stream`'s reads.
    pub fn new(stream: TcpStream) -> Self {
        Self(tokio::io::BufReader::with_capacity(READ_BUFFER, stream))
    }
}

impl AsyncRead for BufferedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BufferedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for BufferedTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().connect_info()
    }
}

/// The listener's connections, each with `TCP_NODELAY` set and buffered reads.
pub fn incoming_nodelay(listener: TcpListener) -> impl Stream<Item = io::Result<BufferedTcp>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(BufferedTcp::new(stream))
    })
}
