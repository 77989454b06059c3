//! CIDs on the wire: parsed with boxo's size bound, written as boxo's prefix, and
//! derived from a block's data by hashing (a block's CID is never taken on trust).

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;
use multihash::Multihash;
use multihash_codetable::{Code, MultihashDigest};

/// boxo's `MaximumAllowedCid`: longer CIDs are refused.
pub const MAX_CID_BYTES: usize = 40 + 128;
/// The multicodec of dag-pb, the only codec a CIDv0 can have.
pub const DAG_PB: u64 = 0x70;
/// sha2-256.
pub(super) const SHA2_256: u64 = 0x12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("malformed CID prefix")]
    BadPrefix,
    #[error("unsupported multihash 0x{0:x}")]
    UnsupportedHash(u64),
    #[error("bad digest length {0}")]
    BadDigestLength(usize),
    #[error("CIDv0 must be sha2-256 dag-pb")]
    BadV0,
}

/// Parses a binary CID, refusing oversized ones.
pub fn parse_cid(bytes: &[u8]) -> Option<Cid> {
    if bytes.is_empty() || bytes.len() > MAX_CID_BYTES {
        return None;
    }
    Cid::try_from(bytes).ok()
}

/// boxo's CID prefix: version, codec, multihash code and digest length, as varints.
pub fn cid_prefix(cid: &Cid) -> Bytes {
    let mut buf = BytesMut::with_capacity(16);
    let mut tmp = unsigned_varint::encode::u64_buffer();
    for v in [
        cid.version() as u64,
        cid.codec(),
        cid.hash().code(),
        cid.hash().size() as u64,
    ] {
        buf.put_slice(unsigned_varint::encode::u64(v, &mut tmp));
    }
    buf.freeze()
}

pub(super) fn parse_prefix(prefix: &[u8]) -> Result<(u64, u64, u64, usize), BlockError> {
    let mut rest = prefix;
    let mut next = || -> Result<u64, BlockError> {
        let (v, r) = unsigned_varint::decode::u64(rest).map_err(|_| BlockError::BadPrefix)?;
        rest = r;
        Ok(v)
    };
    let (version, codec, code, len) = (next()?, next()?, next()?, next()?);
    if !rest.is_empty() {
        return Err(BlockError::BadPrefix);
    }
    Ok((version, codec, code, len as usize))
}

/// The CID of `data` under a prefix. Hashing is what makes a block trustworthy, and in
/// bitswap 1.1+ it is also the only way to learn which CID a block answers.
pub(super) fn derive_cid(
    version: u64,
    codec: u64,
    code: u64,
    len: usize,
    data: &[u8],
) -> Result<Cid, BlockError> {
    let hasher = Code::try_from(code).map_err(|_| BlockError::UnsupportedHash(code))?;
    let full = hasher.digest(data);
    if len == 0 || len > full.size() as usize {
        return Err(BlockError::BadDigestLength(len));
    }
    let mh = Multihash::<64>::wrap(code, &full.digest()[..len])
        .map_err(|_| BlockError::BadDigestLength(len))?;
    match version {
        0 if codec == DAG_PB && code == SHA2_256 && len == 32 => {
            Cid::new_v0(mh).map_err(|_| BlockError::BadV0)
        }
        0 => Err(BlockError::BadV0),
        1 => Ok(Cid::new_v1(codec, mh)),
        _ => Err(BlockError::BadPrefix),
    }
}
