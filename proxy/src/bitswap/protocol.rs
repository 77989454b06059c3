//! The bitswap protocol IDs and what each version can carry.

use libp2p::StreamProtocol;

/// Frames larger than this are refused (the spec's 4 MiB limit).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// `/ipfs/bitswap`: the unversioned original, same wire form as 1.0.0.
    Legacy,
    V1_0_0,
    V1_1_0,
    V1_2_0,
}

impl Version {
    /// Newest first: the order to offer when opening a stream.
    pub const ALL: [Version; 4] = [Self::V1_2_0, Self::V1_1_0, Self::V1_0_0, Self::Legacy];

    pub const fn protocol(self) -> StreamProtocol {
        StreamProtocol::new(match self {
            Self::Legacy => "/ipfs/bitswap",
            Self::V1_0_0 => "/ipfs/bitswap/1.0.0",
            Self::V1_1_0 => "/ipfs/bitswap/1.1.0",
            Self::V1_2_0 => "/ipfs/bitswap/1.2.0",
        })
    }

    /// The version a negotiated protocol ID names.
    pub fn from_protocol(protocol: &StreamProtocol) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.protocol() == *protocol)
    }

    /// CIDv1 blocks (`payload`) arrived in 1.1.0.
    pub fn has_payload(self) -> bool {
        self >= Self::V1_1_0
    }

    /// WANT-HAVE, HAVE, DONT_HAVE and sendDontHave arrived in 1.2.0.
    pub fn has_presences(self) -> bool {
        self == Self::V1_2_0
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
            Self::V1_2_0 => "1.2.0",
        }
    }
}
