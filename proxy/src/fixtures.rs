//! Builders for the unit tests: blocks, wantlists, messages, a loopback TCP pair.

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;
use multihash_codetable::{Code, MultihashDigest};

use crate::bitswap::{Block, Message, Presence, PresenceKind, WantEntry, WantKind};
use crate::preload::dag;

/// One length-delimited protobuf field (wire type 2), as dag-pb nodes are made of.
pub fn pb_len(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    let mut tmp = unsigned_varint::encode::usize_buffer();
    out.extend_from_slice(unsigned_varint::encode::usize(bytes.len(), &mut tmp));
    out.extend_from_slice(bytes);
    out
}

/// A raw block whose bytes name `i`.
pub fn raw_block(i: u32) -> Block {
    let data = Bytes::from(format!("block number {i}"));
    Block {
        cid: Cid::new_v1(dag::RAW, Code::Sha2_256.digest(&data)),
        data,
    }
}

/// A dag-cbor block: a list of links.
pub fn cbor_block(links: &[Cid]) -> Block {
    let mut data = vec![0x80 | links.len() as u8];
    for l in links {
        let b = l.to_bytes();
        data.extend([0xd8, 42, 0x58, (b.len() + 1) as u8, 0x00]);
        data.extend(b);
    }
    Block {
        cid: Cid::new_v1(dag::DAG_CBOR, Code::Sha2_256.digest(&data)),
        data: data.into(),
    }
}

pub fn want(cid: Cid, kind: WantKind, send_dont_have: bool) -> WantEntry {
    WantEntry {
        cid,
        priority: 1,
        cancel: false,
        kind,
        send_dont_have,
    }
}

pub fn cancel(cid: Cid) -> WantEntry {
    WantEntry {
        cancel: true,
        priority: 0,
        ..want(cid, WantKind::Block, false)
    }
}

pub fn wants(entries: Vec<WantEntry>) -> Message {
    Message {
        wants: entries,
        ..Message::default()
    }
}

pub fn blocks(bs: &[Block]) -> Message {
    Message {
        blocks: bs.to_vec(),
        ..Message::default()
    }
}

pub fn presence(cid: Cid, kind: PresenceKind) -> Message {
    Message {
        presences: vec![Presence { cid, kind }],
        ..Message::default()
    }
}

/// A peer ID fixed by `n`, so a test's peers (and their rendezvous order) are the
/// same in every run.
pub fn peer(n: u8) -> PeerId {
    let mut seed = [0u8; 32];
    seed[0] = n;
    seed[31] = 1;
    libp2p::identity::Keypair::ed25519_from_bytes(seed)
        .expect("32 bytes")
        .public()
        .to_peer_id()
}

/// A raw block of `len` bytes, distinct for each `seed`.
pub fn block(seed: u64, len: usize) -> Block {
    let mut data = vec![0u8; len.max(8)];
    data[..8].copy_from_slice(&seed.to_le_bytes());
    let data = Bytes::from(data);
    Block {
        cid: Cid::new_v1(dag::RAW, Code::Sha2_256.digest(&data)),
        data,
    }
}

/// Both ends of one loopback TCP connection, as futures-io streams (the dialed end
/// first), for the security upgrades' tests.
pub async fn tcp_pair() -> (
    tokio_util::compat::Compat<tokio::net::TcpStream>,
    tokio_util::compat::Compat<tokio::net::TcpStream>,
) {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (dialed.unwrap().compat(), accepted.unwrap().0.compat())
}
