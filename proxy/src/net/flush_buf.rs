//! Writes gathered per burst, for the secure channels under yamux.
//!
//! yamux flushes after every frame it writes, and a frame carries at most 16 KiB. Over
//! TLS, rustls seals and sends every write, and yamux writes a frame as two (its 12-byte
//! header, then the body): a frame went out as two records in two syscalls. Under
//! noise, each flush went to the socket as a send of its own (a syscall, and a packet
//! on loopback), sixteen for a 256 KiB block.
//!
//! [`FlushBuf`] holds writes until a flush, and answers the first flush after a write
//! with "not yet", waking its own task: the flush happens when the connection is polled
//! again with nothing new written. By then yamux has written every frame it had ready
//! (it does not wait on a pending flush; it goes on reading and writing frames), and
//! the burst leaves in one write: full records over TLS, one send under noise. The cost
//! is one scheduling round. `shaped` says where it sits for noise and for TLS.
//!
//! Not `futures::io::BufWriter`: that allocates its buffer up front and keeps it for the
//! connection's life, 64 KiB for each of ten thousand mostly idle clients. Here the
//! buffer exists only between the first write and the flush. Closing is never put off.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};

/// Room for four whole yamux frames (16 KiB bodies, their headers, and noise's or TLS's
/// framing). A larger write (or one that would overflow it) goes straight through
/// after what is held.
const CAPACITY: usize = 4 * (16 * 1024 + 64);

/// A stream whose writes are held until a flush that comes after a burst (or until
/// they would overflow).
pub struct FlushBuf<S> {
    inner: S,
    held: Vec<u8>,
    /// Bytes of `held` already written to `inner`.
    sent: usize,
    /// Bytes were written since the last flush was asked for.
    written: bool,
}

impl<S> FlushBuf<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
            written: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> FlushBuf<S> {
    /// Writes out what is held, then lets the buffer go.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlushBuf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buf.len() > CAPACITY {
            ready!(this.poll_send_held(cx))?;
        }
        if buf.len() >= CAPACITY {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.written |= n > 0;
            return Poll::Ready(Ok(n));
        }
        if this.held.capacity() == 0 {
            this.held.reserve_exact(CAPACITY);
        }
        this.held.extend_from_slice(buf);
        this.written |= !buf.is_empty();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.written) {
            // More may come in this round; flush when the task is polled again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.written = false;
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FlushBuf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{ArcWake, waker};
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use libp2p::identity::Keypair;

    use super::*;
    use crate::fixtures::tcp_pair;

    /// A socket that counts the writes made to it.
    struct Counting<C> {
        inner: C,
        writes: Arc<AtomicUsize>,
    }

    impl<C: AsyncRead + Unpin> AsyncRead for Counting<C> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<C: AsyncWrite + Unpin> AsyncWrite for Counting<C> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_close(cx)
        }
    }

    /// libp2p TLS both ways, buffered: a small frame written as yamux writes it (header,
    /// then body) leaves in one socket write at the flush, and no buffer is held after.
    #[tokio::test]
    async fn tls_sends_a_frame_per_flush_and_holds_nothing_between() {
        let (ours, theirs) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (dialed, accepted) = tcp_pair().await;
        let writes = Arc::new(AtomicUsize::new(0));
        let dialed = Counting {
            inner: dialed,
            writes: writes.clone(),
        };
        let client = libp2p::tls::Config::new(&ours).unwrap();
        let server = libp2p::tls::Config::new(&theirs).unwrap();
        let (out, inb) = tokio::join!(
            client.upgrade_outbound(dialed, "/tls/1.0.0"),
            server.upgrade_inbound(accepted, "/tls/1.0.0"),
        );
        let ((server_id, out), (client_id, mut inb)) = (out.unwrap(), inb.unwrap());
        let mut out = FlushBuf::new(out);
        assert_eq!(server_id, theirs.public().to_peer_id());
        assert_eq!(client_id, ours.public().to_peer_id());

        let before = writes.load(Ordering::Relaxed);
        out.write_all(&[7; 12]).await.unwrap();
        out.write_all(&[8; 1024]).await.unwrap();
        assert_eq!(
            writes.load(Ordering::Relaxed),
            before,
            "held until the flush"
        );
        out.flush().await.unwrap();
        assert_eq!(
            writes.load(Ordering::Relaxed),
            before + 1,
            "one write per flush"
        );
        assert_eq!(out.held.capacity(), 0, "nothing held after the flush");

        let mut got = vec![0u8; 12 + 1024];
        inb.read_exact(&mut got).await.unwrap();
        assert!(got[..12].iter().all(|b| *b == 7));
        assert!(
            got[12..].iter().all(|b| *b == 8),
            "bytes unchanged and in order"
        );
    }

    /// Writes that would overflow the buffer send what is held first, and a write
    /// larger than the buffer goes straight through, uncopied; order is kept.
    #[tokio::test]
    async fn overflow_sends_what_is_held_first_and_large_writes_pass() {
        let (a, mut b) = tcp_pair().await;
        let mut a = FlushBuf::new(a);
        let half = CAPACITY / 2 + 1;
        a.write_all(&vec![1; half]).await.unwrap();
        a.write_all(&vec![2; half]).await.unwrap();
        assert_eq!(a.held.len(), half, "the first went out to make room");
        let big = vec![3u8; 2 * CAPACITY];
        let n = futures::future::poll_fn(|cx| Pin::new(&mut a).poll_write(cx, &big))
            .await
            .unwrap();
        assert!(
            a.held.is_empty(),
            "what was held went first, then the large write"
        );
        a.write_all(&big[n..]).await.unwrap();
        a.close().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 2 * half + big.len());
        assert!(got[..half].iter().all(|x| *x == 1));
        assert!(got[half..2 * half].iter().all(|x| *x == 2));
        assert!(got[2 * half..].iter().all(|x| *x == 3));
    }

    /// Records what reaches the stream below: the bytes, flushes and closes.
    #[derive(Default)]
    struct Below {
        bytes: Vec<u8>,
        flushes: usize,
        closed: bool,
    }

    impl AsyncWrite for Below {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().closed = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A waker that counts its wakes, and a fresh stream over `Below`.
    fn counted() -> (Arc<Wakes>, std::task::Waker, FlushBuf<Below>) {
        let wakes = Arc::new(Wakes::default());
        (wakes.clone(), waker(wakes), FlushBuf::new(Below::default()))
    }

    fn write(s: &mut FlushBuf<Below>, cx: &mut Context<'_>, bytes: &[u8]) {
        let n = Pin::new(s).poll_write(cx, bytes);
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    /// The first flush after writes is put off and the task woken to come back; the
    /// next, with nothing written between, reaches the stream below.
    #[test]
    fn a_flush_after_writes_waits_for_the_next_poll() {
        let (wakes, w, mut s) = counted();
        let mut cx = Context::from_waker(&w);

        write(&mut s, &mut cx, b"header");
        write(&mut s, &mut cx, b"body");
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending());
        assert_eq!(s.inner.flushes, 0, "put off");
        assert!(s.inner.bytes.is_empty(), "and the writes held");
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "and the task woken");

        // The task comes back with another frame: the flush is put off again.
        write(&mut s, &mut cx, b"more");
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending());
        assert_eq!(s.inner.flushes, 0);

        // Nothing new: it goes through.
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_ready());
        assert_eq!(s.inner.flushes, 1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        assert_eq!(s.inner.bytes, b"headerbodymore", "every byte, in order");
    }

    #[test]
    fn a_flush_with_nothing_written_and_a_close_are_never_put_off() {
        let (wakes, w, mut s) = counted();
        let mut cx = Context::from_waker(&w);

        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_ready());
        assert_eq!(s.inner.flushes, 1);

        write(&mut s, &mut cx, b"last");
        assert!(Pin::new(&mut s).poll_close(&mut cx).is_ready());
        assert!(s.inner.closed);
        assert_eq!(s.inner.bytes, b"last", "what was held went first");
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "no round was waited for"
        );
    }
}
