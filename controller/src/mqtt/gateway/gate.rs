//! Admission of handshake *work*: the socket under the TLS handshake, with a permit taken
//! only while rustls computes.
//!
//! tokio-rustls reads from the socket and processes what it read (signing, key exchange,
//! verifying the client's chain) in the same poll, then writes its answer or reads again.
//! So a permit taken once bytes have arrived and given back at the next read or write
//! covers exactly the computation. Waiting for a client's bytes never holds one: a silent
//! or slow socket costs a task and a pre-authentication slot, never another device's turn.
//! With as many permits as cores, a storm of handshakes runs a few at a time to the end
//! instead of all at once, each slower than the client's patience.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// A device's socket; gated during its handshake, plain afterwards.
#[derive(Debug)]
pub(super) struct Gated {
    io: TcpStream,
    gate: Option<Gate>,
}

#[derive(Debug)]
struct Gate {
    permits: PollSemaphore,
    held: Option<OwnedSemaphorePermit>,
}

impl Gated {
    pub(super) fn new(io: TcpStream, permits: Arc<Semaphore>) -> Self {
        Self {
            io,
            gate: Some(Gate {
                permits: PollSemaphore::new(permits),
                held: None,
            }),
        }
    }

    /// The handshake is over: give back any permit and stop gating.
    pub(super) fn open(&mut self) {
        self.gate = None;
    }

    /// Whatever was computed since the last read is done: give its permit back.
    fn computed(&mut self) {
        if let Some(gate) = &mut self.gate {
            gate.held = None;
        }
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.computed();
        if let Some(gate) = &mut this.gate {
            // Wait for bytes without a permit, then for a permit to process them.
            ready!(this.io.poll_read_ready(cx))?;
            match ready!(gate.permits.poll_acquire(cx)) {
                Some(p) => gate.held = Some(p),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if r.is_pending() {
            // Readiness was stale: nothing to compute yet.
            this.computed();
        }
        r
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.computed();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.computed();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gate = None;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(permits: Arc<Semaphore>) -> (Gated, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (Gated::new(server, permits), client)
    }

    /// A silent socket never holds a permit; one with bytes holds it until its next write.
    #[tokio::test]
    async fn permits_cover_only_the_work_between_a_read_and_the_next_io() {
        let permits = Arc::new(Semaphore::new(1));
        let (mut silent, _quiet_client) = pair(permits.clone()).await;
        let (mut busy, mut client) = pair(permits.clone()).await;
        let mut b = [0u8; 4];
        // The silent one waits for bytes without taking the only permit.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(100), silent.read(&mut b)).await;
        assert!(waiting.is_err());
        assert_eq!(permits.available_permits(), 1);
        client.write_all(b"ping").await.unwrap();
        assert_eq!(busy.read(&mut b).await.unwrap(), 4);
        assert_eq!(permits.available_permits(), 0, "held while computing");
        busy.write_all(b"pong").await.unwrap();
        assert_eq!(
            permits.available_permits(),
            1,
            "given back at the next write"
        );
        client.write_all(b"more").await.unwrap();
        assert_eq!(busy.read(&mut b).await.unwrap(), 4);
        busy.open();
        assert_eq!(
            permits.available_permits(),
            1,
            "given back when the handshake ends"
        );
    }
}
