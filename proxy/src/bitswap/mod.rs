//! The bitswap wire protocol: framing, protobuf, and versioned messages.

pub mod codec;
pub mod message;
pub mod pb;
pub mod protocol;

pub use message::{Block, Message, Presence, PresenceKind, WantEntry, WantKind};
pub use protocol::{MAX_FRAME_BYTES, Version};
