//! Bounds on client frame bodies still arriving, and reading one frame within them.
//! Without them a peer that sends most of a large frame and stalls holds that memory
//! for as long as its connection lives, and connections x streams x 4 MiB is far more
//! memory than any machine has.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::bitswap::MAX_FRAME_BYTES;
use crate::bitswap::codec::{FrameError, READ_CHUNK, Room, Unlimited, read_body, read_len};

/// The bounds; one value (cloned) is shared by every client stream.
#[derive(Clone, Debug)]
pub struct FrameBounds {
    /// Bytes past each frame's first chunk, over all client streams
    /// (`--max-client-frame-bytes`). A reader waits for room, so flow control holds
    /// its peer back. The first chunk is free so that wants, which fit in it, never wait
    /// behind someone's large frame.
    room: Arc<Semaphore>,
    /// How long a frame body may take from its first byte, waits for room included
    /// (`--frame-timeout`): a stalled frame gives its room back by then.
    timeout: Duration,
    /// Room in use, for `/metrics`.
    in_use: Gauge,
}

impl FrameBounds {
    pub fn new(max_bytes: usize, timeout: Duration, in_use: Gauge) -> Self {
        Self {
            room: Arc::new(Semaphore::new(max_bytes)),
            timeout,
            in_use,
        }
    }

    /// Bytes of room free now.
    pub fn available(&self) -> usize {
        self.room.available_permits()
    }
}

/// One frame's share of the room, given back when dropped.
pub(super) struct FrameRoom {
    room: Arc<Semaphore>,
    free: usize,
    held: Option<OwnedSemaphorePermit>,
    in_use: Gauge,
}

impl Drop for FrameRoom {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            self.in_use.dec_by(held.num_permits() as i64);
        }
    }
}

impl Room for FrameRoom {
    async fn reserve(&mut self, n: usize) -> std::io::Result<()> {
        let taken = n.min(self.free);
        self.free -= taken;
        let need = n - taken;
        if need == 0 {
            return Ok(());
        }
        // `need` is at most one read chunk, far below u32::MAX.
        let permit = self
            .room
            .clone()
            .acquire_many_owned(need as u32)
            .await
            .map_err(|_| std::io::Error::other("frame room closed"))?;
        self.in_use.inc_by(need as i64);
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

pub(super) enum ReadError {
    Frame(FrameError),
    /// The body did not arrive within the frame timeout.
    Slow {
        len: usize,
    },
}

/// Reads the next frame; from a client, within `bounds`. The room it returns is held
/// until the frame has been decoded and its cost taken from the decoded budget.
pub(super) async fn next_frame<R: futures::AsyncRead + Unpin>(
    r: &mut R,
    bounds: Option<&FrameBounds>,
) -> Result<Option<(Bytes, Option<FrameRoom>)>, ReadError> {
    let Some(len) = read_len(r, MAX_FRAME_BYTES)
        .await
        .map_err(ReadError::Frame)?
    else {
        return Ok(None);
    };
    let Some(bounds) = bounds else {
        let body = read_body(r, len, &mut Unlimited).await;
        return body.map(|b| Some((b, None))).map_err(ReadError::Frame);
    };
    let mut room = FrameRoom {
        room: bounds.room.clone(),
        free: READ_CHUNK,
        held: None,
        in_use: bounds.in_use.clone(),
    };
    match tokio::time::timeout(bounds.timeout, read_body(r, len, &mut room)).await {
        Ok(Ok(body)) => Ok(Some((body, Some(room)))),
        Ok(Err(e)) => Err(ReadError::Frame(e)),
        Err(_) => Err(ReadError::Slow { len }),
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;
    use crate::bitswap::codec::write_frame;

    fn frame(len: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        futures::executor::block_on(write_frame(&mut Cursor::new(&mut wire), &vec![1; len]))
            .unwrap();
        wire
    }

    async fn read(r: &mut Cursor<Vec<u8>>, bounds: &FrameBounds) -> (Bytes, Option<FrameRoom>) {
        match next_frame(r, Some(bounds)).await {
            Ok(Some(read)) => read,
            _ => panic!("a whole frame"),
        }
    }

    #[tokio::test]
    async fn small_frames_need_no_room_and_large_ones_hold_it_until_dropped() {
        let in_use = Gauge::default();
        let bounds = FrameBounds::new(READ_CHUNK, Duration::from_secs(60), in_use.clone());
        let mut wire = frame(READ_CHUNK);
        wire.extend(frame(2 * READ_CHUNK));
        let mut r = Cursor::new(wire);
        let (small, room) = read(&mut r, &bounds).await;
        assert_eq!(small.len(), READ_CHUNK);
        assert_eq!(bounds.available(), READ_CHUNK, "a first chunk is free");
        drop(room);
        let (big, room) = read(&mut r, &bounds).await;
        assert_eq!(big.len(), 2 * READ_CHUNK);
        assert_eq!(bounds.available(), 0, "held while the frame is decoded");
        assert_eq!(in_use.get(), READ_CHUNK as i64);
        drop(room);
        assert_eq!(bounds.available(), READ_CHUNK);
        assert_eq!(in_use.get(), 0);
        // Backends are not bounded.
        let mut r = Cursor::new(frame(4 * READ_CHUNK));
        let Ok(Some((body, None))) = next_frame(&mut r, None).await else {
            panic!("a whole frame, no room");
        };
        assert_eq!(body.len(), 4 * READ_CHUNK);
    }

    #[tokio::test]
    async fn a_frame_waiting_for_room_is_cut_at_the_timeout() {
        let bounds = FrameBounds::new(READ_CHUNK, Duration::from_millis(200), Gauge::default());
        let (_, holder) = read(&mut Cursor::new(frame(2 * READ_CHUNK)), &bounds).await;
        assert_eq!(bounds.available(), 0);
        let mut r = Cursor::new(frame(3 * READ_CHUNK));
        let got = next_frame(&mut r, Some(&bounds)).await;
        assert!(matches!(got, Err(ReadError::Slow { len }) if len == 3 * READ_CHUNK));
        drop(holder);
        assert_eq!(bounds.available(), READ_CHUNK);
    }

    /// Gives what `wire` holds, then nothing, forever: a peer that stalls.
    struct Stalls {
        wire: Cursor<Vec<u8>>,
    }

    impl futures::AsyncRead for Stalls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            match std::pin::Pin::new(&mut self.wire).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(0)) => std::task::Poll::Pending,
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_frame_is_cut_at_the_timeout_and_gives_its_room_back() {
        let bounds = FrameBounds::new(4 * READ_CHUNK, Duration::from_millis(200), Gauge::default());
        let mut wire = frame(4 * READ_CHUNK);
        wire.truncate(3 * READ_CHUNK);
        let mut r = Stalls {
            wire: Cursor::new(wire),
        };
        let got = next_frame(&mut r, Some(&bounds)).await;
        assert!(matches!(got, Err(ReadError::Slow { .. })));
        assert_eq!(bounds.available(), 4 * READ_CHUNK);
    }
}
