//! Framing: an unsigned-varint length, then that many bytes of protobuf.

use bytes::{Bytes, BytesMut};
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
            let mut buf = BytesMut::zeroed(len as usize);
            r.read_exact(&mut buf).await?;
            return Ok(Some(buf.freeze()));
        }
    }
    Err(FrameError::BadLength)
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

    #[test]
    fn truncated_frames_are_errors() {
        let err = block_on(read_frame(&mut Cursor::new(vec![5, 1, 2]), 100)).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
        let err = block_on(read_frame(&mut Cursor::new(vec![0x80]), 100)).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }
}
