//! CARv1 framing and what a CAR walk follows.
//!
//! The framing is written here rather than taken from a crate: a CARv1 is one fixed
//! dag-cbor header (`{roots: [cid], version: 1}`) and then varint-framed
//! `(cid, block)` sections, about thirty lines; the CAR crates on crates.io bring
//! an async writer API and their own `cid` pins for what is two `Bytes` per block.

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;

use super::request::Scope;
use crate::preload::dag::{self, DAG_PB, DagError, pb_field};

/// The CARv1 header naming `root`, with its length prefix.
pub fn header(root: &Cid) -> Bytes {
    let cid = root.to_bytes();
    let mut cbor = BytesMut::with_capacity(cid.len() + 32);
    // A map of two entries, keys in dag-cbor order (shorter first): "roots", "version".
    cbor.put_u8(0xa2);
    cbor.put_u8(0x65);
    cbor.put_slice(b"roots");
    cbor.put_u8(0x81); // an array of one
    cbor.put_slice(&[0xd8, 42]); // tag 42: a CID
    cbor_bytes_head(&mut cbor, cid.len() + 1);
    cbor.put_u8(0x00); // the multibase identity prefix dag-cbor links carry
    cbor.put_slice(&cid);
    cbor.put_u8(0x67);
    cbor.put_slice(b"version");
    cbor.put_u8(0x01);
    let mut out = BytesMut::with_capacity(cbor.len() + 10);
    put_varint(&mut out, cbor.len());
    out.put_slice(&cbor);
    out.freeze()
}

/// The length prefix and CID of a block's section; the block's bytes follow as they
/// are (no copy).
pub fn section_head(cid: &Cid, data_len: usize) -> Bytes {
    let cid = cid.to_bytes();
    let mut out = BytesMut::with_capacity(cid.len() + 10);
    put_varint(&mut out, cid.len() + data_len);
    out.put_slice(&cid);
    out.freeze()
}

fn put_varint(out: &mut BytesMut, n: usize) {
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.put_slice(unsigned_varint::encode::usize(n, &mut buf));
}

/// A CBOR byte-string head (major type 2) for `len` bytes.
fn cbor_bytes_head(out: &mut BytesMut, len: usize) {
    match len {
        0..=23 => out.put_u8(0x40 | len as u8),
        24..=0xff => {
            out.put_u8(0x58);
            out.put_u8(len as u8);
        }
        _ => {
            out.put_u8(0x59);
            out.put_u16(len as u16);
        }
    }
}

/// How the walk goes on below a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Every link.
    All,
    /// Nothing below this block.
    None,
    /// A sharded (HAMT) directory: only links to its own shards, not to its entries.
    Shards,
}

/// What a walk of `scope` follows below its root.
pub fn follow_root(scope: Scope, cid: &Cid, data: &[u8]) -> Result<Follow, DagError> {
    Ok(match scope {
        Scope::Block => Follow::None,
        Scope::All => Follow::All,
        Scope::Entity if cid.codec() != DAG_PB => Follow::None,
        Scope::Entity => match unixfs_kind(data)? {
            UnixfsKind::File => Follow::All,
            UnixfsKind::Shard { .. } => Follow::Shards,
            UnixfsKind::Other => Follow::None,
        },
    })
}

/// The links the walk follows below a block: (link, how to go on below it), in
/// order. A CID's hash is not checked here: blocks come verified.
pub fn children(follow: Follow, cid: &Cid, data: &[u8]) -> Result<Vec<(Cid, Follow)>, DagError> {
    match follow {
        Follow::None => Ok(Vec::new()),
        Follow::All => Ok(dag::links(cid, data)?
            .into_iter()
            .map(|c| (c, Follow::All))
            .collect()),
        Follow::Shards => {
            // A shard's links are named by a bucket index of `width` hex digits,
            // followed by the entry's name for entries; a bare index is a sub-shard.
            let UnixfsKind::Shard { width } = unixfs_kind(data)? else {
                return Ok(Vec::new());
            };
            Ok(named_links(data)?
                .into_iter()
                .filter(|(_, name)| name.len() == width)
                .map(|(c, _)| (c, Follow::Shards))
                .collect())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnixfsKind {
    /// A file (or raw bytes): its entity is all its blocks.
    File,
    /// A HAMT shard whose bucket names are `width` hex digits.
    Shard { width: usize },
    /// A directory, symlink or metadata: its entity is its own block.
    Other,
}

const BAD_PB: DagError = DagError::Malformed("dag-pb");

/// The UnixFS type of a dag-pb node (PBNode field 1 is the UnixFS `Data` message:
/// field 1 its type, field 6 a shard's fanout).
fn unixfs_kind(node: &[u8]) -> Result<UnixfsKind, DagError> {
    let mut buf = node;
    let mut data = None;
    while !buf.is_empty() {
        if let (1, Some(d)) = pb_field(&mut buf).ok_or(BAD_PB)? {
            data = Some(d);
        }
    }
    // No Data: not UnixFS; its entity is the block.
    let Some(mut buf) = data else {
        return Ok(UnixfsKind::Other);
    };
    let (mut kind, mut fanout) = (None, None);
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let skip = match key & 7 {
            0 => {
                let v = varint(&mut buf)?;
                match key >> 3 {
                    1 => kind = Some(v),
                    6 => fanout = Some(v),
                    _ => {}
                }
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut buf)?).map_err(|_| BAD_PB)?,
            5 => 4,
            _ => return Err(BAD_PB),
        };
        buf = buf.get(skip..).ok_or(BAD_PB)?;
    }
    Ok(match kind {
        Some(0 | 2) => UnixfsKind::File,
        Some(5) => {
            let fanout = fanout.unwrap_or(256).max(2);
            // Digits of the largest bucket index, in hex.
            let width = format!("{:X}", fanout - 1).len();
            UnixfsKind::Shard { width }
        }
        _ => UnixfsKind::Other,
    })
}

fn varint(buf: &mut &[u8]) -> Result<u64, DagError> {
    let (v, rest) = unsigned_varint::decode::u64(buf).map_err(|_| BAD_PB)?;
    *buf = rest;
    Ok(v)
}

/// A dag-pb node's links with their names (PBLink field 1: hash, 2: name).
fn named_links(node: &[u8]) -> Result<Vec<(Cid, String)>, DagError> {
    let mut out = Vec::new();
    let mut buf = node;
    while !buf.is_empty() {
        let (2, Some(mut link)) = pb_field(&mut buf).ok_or(BAD_PB)? else {
            continue;
        };
        let (mut hash, mut name) = (None, String::new());
        while !link.is_empty() {
            match pb_field(&mut link).ok_or(BAD_PB)? {
                (1, Some(h)) => hash = Some(Cid::try_from(h).map_err(|_| BAD_PB)?),
                (2, Some(n)) => name = String::from_utf8_lossy(n).into_owned(),
                _ => {}
            }
        }
        out.push((hash.ok_or(BAD_PB)?, name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pb_len;
    use multihash_codetable::{Code, MultihashDigest};

    /// A dag-pb node: named links, then UnixFS Data of `kind` (and `fanout`).
    fn node(links: &[(Cid, &str)], kind: u8, fanout: Option<u8>) -> (Cid, Vec<u8>) {
        let mut data = Vec::new();
        for (c, name) in links {
            let mut link = pb_len(1, &c.to_bytes());
            link.extend(pb_len(2, name.as_bytes()));
            data.extend(pb_len(2, &link));
        }
        let mut unixfs = vec![0x08, kind];
        if let Some(f) = fanout {
            unixfs.extend([0x30, f]);
        }
        data.extend(pb_len(1, &unixfs));
        (Cid::new_v1(DAG_PB, Code::Sha2_256.digest(&data)), data)
    }

    fn raw(s: &str) -> Cid {
        Cid::new_v1(dag::RAW, Code::Sha2_256.digest(s.as_bytes()))
    }

    #[test]
    fn the_header_is_dag_cbor_naming_the_root() {
        let root = raw("x");
        let h = header(&root);
        let (len, cbor) = unsigned_varint::decode::usize(&h).unwrap();
        assert_eq!(len, cbor.len());
        let mut expect = vec![0xa2, 0x65];
        expect.extend(b"roots");
        expect.extend([0x81, 0xd8, 42, 0x58, root.to_bytes().len() as u8 + 1, 0]);
        expect.extend(root.to_bytes());
        expect.push(0x67);
        expect.extend(b"version");
        expect.push(1);
        assert_eq!(cbor, &expect[..]);
        let s = section_head(&root, 10);
        let (n, rest) = unsigned_varint::decode::usize(&s).unwrap();
        assert_eq!(
            (n, rest),
            (root.to_bytes().len() + 10, &root.to_bytes()[..])
        );
    }

    #[test]
    fn scopes_follow_what_the_spec_says() {
        let (file, file_data) = node(&[(raw("a"), ""), (raw("b"), "")], 2, None);
        let (dir, dir_data) = node(&[(file, "f.txt")], 1, None);
        assert_eq!(
            follow_root(Scope::Block, &file, &file_data),
            Ok(Follow::None)
        );
        assert_eq!(
            follow_root(Scope::Entity, &file, &file_data),
            Ok(Follow::All)
        );
        assert_eq!(
            follow_root(Scope::Entity, &dir, &dir_data),
            Ok(Follow::None)
        );
        assert_eq!(follow_root(Scope::All, &dir, &dir_data), Ok(Follow::All));
        assert_eq!(
            follow_root(Scope::Entity, &raw("r"), b"r"),
            Ok(Follow::None),
            "non-UnixFS entity is its block"
        );
        let kids = children(Follow::All, &file, &file_data).unwrap();
        assert_eq!(kids, vec![(raw("a"), Follow::All), (raw("b"), Follow::All)]);
    }

    #[test]
    fn a_sharded_directory_entity_is_its_shards_not_its_entries() {
        let (sub, _) = node(&[], 5, Some(0));
        let entry = raw("entry");
        // Fanout 256: bucket names are two hex digits; entries carry their name after.
        let (shard, data) = node(&[(sub, "0A"), (entry, "1Ffile.txt")], 5, None);
        let f = follow_root(Scope::Entity, &shard, &data).unwrap();
        assert_eq!(f, Follow::Shards);
        assert_eq!(
            children(f, &shard, &data).unwrap(),
            vec![(sub, Follow::Shards)]
        );
    }
}
