//! A read buffer that exists only while a stream is busy. A buffered reader holds its
//! buffer for the stream's life, and a client's bitswap stream lives as long as its
//! connection, mostly idle: ten thousand of them held 64 KiB each. This one allocates
//! on the first read that needs it and frees it when it is drained and the stream has
//! nothing more to give, so an idle stream holds nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::AsyncRead;

pub struct IdleBuf<R> {
    inner: R,
    capacity: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    filled: usize,
}

impl<R> IdleBuf<R> {
    pub fn new(capacity: usize, inner: R) -> Self {
        Self {
            inner,
            capacity,
            buf: None,
            pos: 0,
            filled: 0,
        }
    }

    /// Whether a buffer is held now.
    #[cfg(test)]
    fn holds(&self) -> bool {
        self.buf.is_some()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleBuf<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            // Nothing buffered: a read as large as the buffer needs none.
            if out.len() >= this.capacity {
                let read = Pin::new(&mut this.inner).poll_read(cx, out);
                if read.is_pending() {
                    this.buf = None;
                }
                return read;
            }
            let capacity = this.capacity;
            let buf = this
                .buf
                .get_or_insert_with(|| vec![0; capacity].into_boxed_slice());
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    this.pos = 0;
                    this.filled = n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle: give the buffer back until there is something to read.
                    this.buf = None;
                    return Poll::Pending;
                }
            }
        }
        let Some(buf) = &this.buf else {
            return Poll::Ready(Ok(0));
        };
        let n = out.len().min(this.filled - this.pos);
        out[..n].copy_from_slice(&buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use futures::AsyncReadExt;

    use super::*;

    /// Gives its chunks one per read, and Pending between them.
    struct Trickle {
        chunks: Vec<Vec<u8>>,
        pending_next: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.pending_next {
                self.pending_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending_next = true;
            if self.chunks.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let chunk = self.chunks.remove(0);
            let n = chunk.len().min(out.len());
            out[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.insert(0, chunk[n..].to_vec());
            }
            Poll::Ready(Ok(n))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn small_reads_are_buffered_and_the_buffer_goes_when_the_stream_waits() {
        let inner = Trickle {
            chunks: vec![b"abcdef".to_vec(), b"gh".to_vec()],
            pending_next: false,
        };
        let mut r = IdleBuf::new(16, inner);
        let mut one = [0u8; 1];
        block_on(r.read_exact(&mut one)).unwrap();
        assert_eq!(&one, b"a");
        assert!(r.holds(), "the rest of the first chunk is buffered");
        let mut five = [0u8; 5];
        block_on(r.read_exact(&mut five)).unwrap();
        assert_eq!(&five, b"bcdef");
        let mut rest = Vec::new();
        block_on(r.read_to_end(&mut rest)).unwrap();
        assert_eq!(rest, b"gh");
        assert!(!r.holds(), "drained and waiting: no buffer");
    }

    #[test]
    fn large_reads_bypass_the_buffer() {
        let inner = Trickle {
            chunks: vec![vec![7; 40]],
            pending_next: true,
        };
        let mut r = IdleBuf::new(16, inner);
        let mut big = [0u8; 40];
        block_on(r.read_exact(&mut big)).unwrap();
        assert_eq!(big, [7; 40]);
        assert!(!r.holds());
    }
}
