//! Bitswap on a libp2p host, laid out as rust-libp2p lays out its protocols: the
//! behaviour, its per-connection handler and the stream upgrade, then the tasks that do
//! the stream I/O: a reader per inbound stream, a writer per peer. The wire format
//! itself (messages, frames, sizes) is `crate::bitswap`.
//!
//! - `behaviour`: inbound streams as events; tracks open connections for `control`
//! - `control`: opening streams to connected peers from any task
//! - `handler`: one connection's streams, both directions
//! - `protocol`: negotiating a bitswap version
//! - `reader`: admitting inbound streams and decoding them for the engine
//! - `idle_buf`: a read buffer held only while a stream is busy
//! - `frame_bounds`: bounds on client frames still arriving
//! - `writer`: one task per peer that batches and writes, rotating streams
//! - `coalesce`: a frame's small segments gathered into few muxer writes

mod behaviour;
mod coalesce;
mod control;
mod frame_bounds;
mod handler;
mod idle_buf;
mod protocol;
mod reader;
mod writer;

pub use behaviour::{Behaviour, InboundStream};
pub use control::{Control, OpenError};
pub use frame_bounds::FrameBounds;
pub use handler::Handler;
pub use protocol::Upgrade;
pub use reader::{DECODED_BUDGET_BYTES, Inbound, Readers};
pub use writer::{ONE_STREAM, QueueError, STREAM_BUDGET, Undelivered, Writer};
