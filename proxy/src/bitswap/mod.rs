//! The bitswap wire format, pure (no I/O beyond reading and writing frames): protocol
//! versions, framing, the protobuf, messages, their encoding, and their sizes.

pub mod cids;
pub mod codec;
pub mod encode;
pub mod message;
pub mod pb;
pub mod protocol;
pub mod size;
#[cfg(test)]
mod tests;

pub use cids::MAX_CID_BYTES;
pub use message::{Block, Message, Presence, PresenceKind, WantEntry, WantKind};
pub use protocol::{MAX_FRAME_BYTES, Version};
