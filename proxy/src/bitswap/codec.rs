//! Framing: an unsigned-varint length, then that many bytes of protobuf.

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    #[error("malformed length prefix")]
    BadLength,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Ok(None)` is a clean end of stream between frames.
/// The declared length is checked before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    match read_len(r, max).await? {
        Some(len) => read_body(r, len, &mut Unlimited).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix; `Ok(None)` is a clean end of stream.
pub async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<usize>, FrameError> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
            };
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            if i > 0 && b[0] == 0 {
                return Err(FrameError::BadLength); // not minimally encoded
            }
            if len > max as u64 {
                return Err(FrameError::TooLarge { len, max });
            }
            return Ok(Some(len as usize));
        }
    }
    Err(FrameError::BadLength)
}

/// Grants room for a frame body's bytes before they are read, so that bytes held in
/// frames still arriving can be bounded across many streams.
pub trait Room {
    /// Room for `n` more bytes of the frame being read; waits until there is some.
    fn reserve(&mut self, n: usize) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// No bound beyond the frame limit.
pub struct Unlimited;

impl Room for Unlimited {
    async fn reserve(&mut self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
}

/// How much of a frame body is zero-filled and read at a time.
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads exactly `len` bytes, asking `room` for each chunk before it is allocated. The
/// buffer's capacity is the frame's length, reserved at once so it never moves (no
/// realloc copies), but only the part about to be read is ever written: untouched
/// capacity is address space, not resident memory, so a peer that declares a 4 MiB
/// frame and sends a few bytes holds a few pages, not 4 MiB.
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    room: &mut impl Room,
) -> Result<Bytes, FrameError> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let chunk = READ_CHUNK.min(len - filled);
        room.reserve(chunk).await?;
        buf.resize(filled + chunk, 0);
        let mut at = filled;
        while at < buf.len() {
            match r.read(&mut buf[at..]).await {
                Ok(0) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// Writes one frame (the caller flushes).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let mut tmp = unsigned_varint::encode::usize_buffer();
    w.write_all(unsigned_varint::encode::usize(frame.len(), &mut tmp))
        .await?;
    w.write_all(frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    const MAX: usize = 4 << 20;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut wire = Vec::new();
        block_on(async {
            let mut w = Cursor::new(&mut wire);
            write_frame(&mut w, b"abc").await.unwrap();
            write_frame(&mut w, &vec![7u8; 300]).await.unwrap();
            write_frame(&mut w, b"").await.unwrap();
        });
        let mut r = Cursor::new(wire);
        block_on(async {
            assert_eq!(
                read_frame(&mut r, 1000).await.unwrap().unwrap(),
                &b"abc"[..]
            );
            assert_eq!(read_frame(&mut r, 1000).await.unwrap().unwrap().len(), 300);
            assert_eq!(read_frame(&mut r, 1000).await.unwrap().unwrap().len(), 0);
            assert!(read_frame(&mut r, 1000).await.unwrap().is_none());
        });
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        // Claims 4 MiB + 1 and sends nothing more.
        let mut tmp = unsigned_varint::encode::usize_buffer();
        let prefix = unsigned_varint::encode::usize((4 << 20) + 1, &mut tmp).to_vec();
        let err = block_on(read_frame(&mut Cursor::new(prefix), 4 << 20)).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == (4 << 20) + 1));
        // An absurd 10-byte varint.
        let err = block_on(read_frame(&mut Cursor::new(vec![0xff; 11]), 4 << 20)).unwrap_err();
        assert!(matches!(
            err,
            FrameError::BadLength | FrameError::TooLarge { .. }
        ));
    }

    /// Hands out at most `chunk` bytes per read and records the largest buffer it was
    /// asked to fill: what the reader had allocated for the frame at that point.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        largest_buf: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.largest_buf = self.largest_buf.max(buf.len());
            let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    /// Found by the `bitswap_frame` fuzz target: a 49-byte stream whose second frame
    /// declares 272,186 bytes made the reader fill a buffer of all of them before any
    /// arrived. Now only the chunk about to be read is ever written (the rest of the
    /// reserved capacity stays untouched address space).
    #[test]
    fn a_declared_length_touches_memory_only_as_bytes_arrive() {
        let crash: &[u8] = &[
            0x2c, 0x0a, 0x00, 0x67, 0x28, 0x22, 0x0a, 0x00, 0x00, 0x00, 0x30, 0x20, 0xc7, 0xd0,
            0x14, 0x89, 0x08, 0x08, 0x58, 0xc5, 0x00, 0x06, 0xff, 0xff, 0xff, 0xff, 0xf8, 0x47,
            0xa6, 0xca, 0x67, 0xc4, 0x86, 0x46, 0xd0, 0x14, 0x89, 0x19, 0x21, 0x2b, 0xe4, 0xf8,
            0x20, 0x0e, 0x4b, 0xba, 0xce, 0x10, 0x01,
        ];
        let mut r = Trickle {
            data: crash.to_vec(),
            pos: 0,
            chunk: usize::MAX,
            largest_buf: 0,
        };
        assert_eq!(
            block_on(read_frame(&mut r, MAX)).unwrap().unwrap().len(),
            44
        );
        let err = block_on(read_frame(&mut r, MAX)).unwrap_err();
        assert!(
            matches!(err, FrameError::Io(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        );
        assert!(
            r.largest_buf <= READ_CHUNK,
            "asked to fill {}",
            r.largest_buf
        );

        // A 4 MiB frame declared, three bytes sent.
        let mut tmp = unsigned_varint::encode::usize_buffer();
        let mut wire = unsigned_varint::encode::usize(MAX, &mut tmp).to_vec();
        wire.extend_from_slice(b"abc");
        let mut r = Trickle {
            data: wire,
            pos: 0,
            chunk: usize::MAX,
            largest_buf: 0,
        };
        assert!(block_on(read_frame(&mut r, MAX)).is_err());
        assert!(
            r.largest_buf <= READ_CHUNK,
            "asked to fill {}",
            r.largest_buf
        );
    }

    #[test]
    fn big_frames_arriving_in_pieces_read_whole() {
        for len in [READ_CHUNK - 1, READ_CHUNK, READ_CHUNK + 1, MAX] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut wire = Vec::new();
            block_on(write_frame(&mut Cursor::new(&mut wire), &body)).unwrap();
            wire.extend_from_slice(&[1, 9]);
            let mut r = Trickle {
                data: wire,
                pos: 0,
                chunk: 1000,
                largest_buf: 0,
            };
            let frame = block_on(read_frame(&mut r, MAX)).unwrap().unwrap();
            assert!(frame == body, "{len}");
            assert_eq!(
                &block_on(read_frame(&mut r, MAX)).unwrap().unwrap()[..],
                [9]
            );
            assert!(block_on(read_frame(&mut r, MAX)).unwrap().is_none());
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        let err = block_on(read_frame(&mut Cursor::new(vec![5, 1, 2]), 100)).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
        let err = block_on(read_frame(&mut Cursor::new(vec![0x80]), 100)).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }

    /// Records each reservation and how many body bytes had been read when it came;
    /// refuses once `limit` bytes are reserved.
    struct Ledger {
        reserved: Vec<(usize, usize)>,
        total: usize,
        limit: usize,
        read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Room for Ledger {
        async fn reserve(&mut self, n: usize) -> std::io::Result<()> {
            if self.total + n > self.limit {
                return Err(std::io::Error::other("no room"));
            }
            let read = self.read.load(std::sync::atomic::Ordering::SeqCst);
            self.reserved.push((n, read));
            self.total += n;
            Ok(())
        }
    }

    /// Counts the bytes read through it.
    struct Counted<R> {
        inner: R,
        read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let p = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            if let std::task::Poll::Ready(Ok(n)) = p {
                self.read.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
            p
        }
    }

    #[test]
    fn room_is_reserved_chunk_by_chunk_before_the_bytes_are_read() {
        let len = 3 * READ_CHUNK + 100;
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut r = Counted {
            inner: Cursor::new(vec![3u8; len]),
            read: read.clone(),
        };
        let mut room = Ledger {
            reserved: Vec::new(),
            total: 0,
            limit: usize::MAX,
            read: read.clone(),
        };
        let body = block_on(read_body(&mut r, len, &mut room)).unwrap();
        assert_eq!(body.len(), len);
        assert_eq!(
            room.reserved,
            vec![
                (READ_CHUNK, 0),
                (READ_CHUNK, READ_CHUNK),
                (READ_CHUNK, 2 * READ_CHUNK),
                (100, 3 * READ_CHUNK)
            ]
        );
    }

    #[test]
    fn a_refused_reservation_ends_the_read_before_more_is_read() {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut r = Counted {
            inner: Cursor::new(vec![3u8; 4 * READ_CHUNK]),
            read: read.clone(),
        };
        let mut room = Ledger {
            reserved: Vec::new(),
            total: 0,
            limit: 2 * READ_CHUNK,
            read: read.clone(),
        };
        let err = block_on(read_body(&mut r, 4 * READ_CHUNK, &mut room)).unwrap_err();
        assert!(matches!(err, FrameError::Io(ref e) if e.to_string() == "no room"));
        assert_eq!(
            read.load(std::sync::atomic::Ordering::SeqCst),
            2 * READ_CHUNK
        );
    }
}
