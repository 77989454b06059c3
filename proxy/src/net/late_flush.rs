//! Flushes put off to the end of a burst of writes, for the secure channels under yamux.
//!
//! yamux flushes after every frame it writes, and a frame carries at most 16 KiB: each
//! went to the socket as a send of its own (a syscall, and a packet on loopback),
//! sixteen for a 256 KiB block. [`LateFlush`] answers the first flush after a write
//! with "not yet" and wakes its own task, so the flush happens when the connection is
//! polled again with nothing new written: by then yamux has written every frame it had
//! ready, held below in one buffer (`FlushBuf`), and they leave in one send. The cost
//! is one scheduling round; yamux does not wait on a pending flush (it goes on reading
//! and writing frames). `shaped` says where it sits for noise and for TLS.
//!
//! Nothing is held here. Closing is never put off.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

/// A stream whose flush waits for the writer to run out of writes.
pub struct LateFlush<S> {
    inner: S,
    /// Bytes were written since the last flush was asked for.
    written: bool,
}

impl<S> LateFlush<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            written: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LateFlush<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.written |= matches!(n, Poll::Ready(Ok(n)) if n > 0);
        n
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.written |= matches!(n, Poll::Ready(Ok(n)) if n > 0);
        n
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.written) {
            // More may come in this round; flush when the task is polled again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.written = false;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LateFlush<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{ArcWake, waker};

    use super::*;

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

    fn write(s: &mut LateFlush<Below>, cx: &mut Context<'_>, bytes: &[u8]) {
        let n = Pin::new(s).poll_write(cx, bytes);
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    /// The first flush after writes is put off and the task woken to come back; the
    /// next, with nothing written between, reaches the stream below.
    #[test]
    fn a_flush_after_writes_waits_for_the_next_poll() {
        let wakes = Arc::new(Wakes::default());
        let w = waker(wakes.clone());
        let mut cx = Context::from_waker(&w);
        let mut s = LateFlush::new(Below::default());

        write(&mut s, &mut cx, b"header");
        write(&mut s, &mut cx, b"body");
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending());
        assert_eq!(s.inner.flushes, 0, "put off");
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
        let wakes = Arc::new(Wakes::default());
        let w = waker(wakes.clone());
        let mut cx = Context::from_waker(&w);
        let mut s = LateFlush::new(Below::default());

        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_ready());
        assert_eq!(s.inner.flushes, 1);

        write(&mut s, &mut cx, b"last");
        assert!(Pin::new(&mut s).poll_close(&mut cx).is_ready());
        assert!(s.inner.closed);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "no round was waited for"
        );
    }
}
