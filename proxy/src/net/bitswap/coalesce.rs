//! Writes a frame's segments with as few muxer writes as the content allows.
//!
//! Every write to a muxed stream becomes at least one muxer frame of its own (yamux
//! copies it into a fresh frame, queues it to the connection task and adds a 12-byte
//! header). A bitswap frame is a varint, protobuf headers and block data in separate
//! segments: written one by one, a 1 KiB block cost three muxer frames, and a want
//! two. Small segments are copied into one buffer and written together; a large
//! segment (block data) is written as it is, uncopied, the muxer splitting it.

use bytes::Bytes;
use futures::{AsyncWrite, AsyncWriteExt};

/// A segment at least this long is written on its own: copying it would cost more
/// than the frame it saves. Also the most that is gathered into one write, the size
/// of a yamux frame (rust-yamux splits writes at 16 KiB).
pub const GATHER: usize = 16 * 1024;

/// Writes `segments` in order, the small ones gathered into writes of up to
/// [`GATHER`] bytes. The caller flushes.
pub async fn write_segments<'a, W: AsyncWrite + Unpin>(
    w: &mut W,
    segments: impl IntoIterator<Item = &'a Bytes>,
) -> std::io::Result<()> {
    // Allocated on the first small segment and dropped on return: an idle client's
    // writer holds no buffer.
    let mut gathered: Vec<u8> = Vec::new();
    for segment in segments {
        if segment.len() >= GATHER {
            if !gathered.is_empty() {
                w.write_all(&gathered).await?;
                gathered.clear();
            }
            w.write_all(segment).await?;
            continue;
        }
        if gathered.len() + segment.len() > GATHER {
            w.write_all(&gathered).await?;
            gathered.clear();
        }
        if gathered.capacity() == 0 {
            gathered.reserve_exact(GATHER);
        }
        gathered.extend_from_slice(segment);
    }
    if !gathered.is_empty() {
        w.write_all(&gathered).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Records each write as the muxer would see it.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn bytes(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    async fn written(segments: &[Bytes]) -> Vec<Vec<u8>> {
        let mut w = Writes::default();
        write_segments(&mut w, segments).await.unwrap();
        let all: Vec<u8> = w.0.concat();
        assert_eq!(all, segments.concat(), "the bytes, in order, unchanged");
        w.0
    }

    #[tokio::test]
    async fn small_blocks_go_out_in_few_writes() {
        // A frame of forty 1 KiB blocks: varint, then head and data per block.
        let mut segments = vec![bytes(3, 0)];
        for i in 0..40 {
            segments.push(bytes(20, i));
            segments.push(bytes(1024, i));
        }
        let writes = written(&segments).await;
        // 41,763 bytes: three writes, none over a yamux frame; 81 written one by one.
        assert_eq!(writes.len(), 3);
        assert!(writes.iter().all(|w| w.len() <= GATHER));
    }

    #[tokio::test]
    async fn block_data_is_written_whole_after_its_gathered_head() {
        let segments = [
            bytes(3, 1),
            bytes(24, 2),
            bytes(256 * 1024, 3),
            bytes(24, 4),
        ];
        let writes = written(&segments).await;
        let sizes: Vec<usize> = writes.iter().map(Vec::len).collect();
        assert_eq!(sizes, [27, 256 * 1024, 24]);
    }

    #[tokio::test]
    async fn a_want_is_one_write() {
        let writes = written(&[bytes(2, 1), bytes(300, 2)]).await;
        assert_eq!(writes.len(), 1);
    }
}
