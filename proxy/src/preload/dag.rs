//! Link extraction: the CIDs a block links to, for the codecs a preloaded DAG is made
//! of. Pure, allocation-bounded by the block itself, and never recursive on input (a
//! hostile block cannot overflow the stack).

use cid::Cid;

pub const RAW: u64 = 0x55;
pub const DAG_PB: u64 = 0x70;
pub const DAG_CBOR: u64 = 0x71;
pub const DAG_JSON: u64 = 0x0129;

/// Why a block's links could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DagError {
    #[error("codec 0x{0:x} is not followed")]
    UnsupportedCodec(u64),
    #[error("malformed {0} block")]
    Malformed(&'static str),
}

/// The CIDs `data` (the block of `cid`) links to, in order. Raw blocks have none.
pub fn links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>, DagError> {
    match cid.codec() {
        RAW => Ok(Vec::new()),
        DAG_PB => dag_pb_links(data),
        DAG_CBOR => dag_cbor_links(data),
        DAG_JSON => dag_json_links(data),
        other => Err(DagError::UnsupportedCodec(other)),
    }
}

// ------------------------------------------------------------------ dag-pb

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let (v, rest) = unsigned_varint::decode::u64(buf).ok()?;
    *buf = rest;
    Some(v)
}

/// Reads one protobuf field: `(field number, Some(bytes))` for length-delimited fields,
/// `(field number, None)` for the others (skipped).
pub(crate) fn pb_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let key = varint(buf)?;
    let (field, wire) = (key >> 3, key & 7);
    match wire {
        0 => {
            varint(buf)?;
            Some((field, None))
        }
        1 | 5 => {
            let n = if wire == 1 { 8 } else { 4 };
            if buf.len() < n {
                return None;
            }
            *buf = &buf[n..];
            Some((field, None))
        }
        2 => {
            let len = usize::try_from(varint(buf)?).ok()?;
            if buf.len() < len {
                return None;
            }
            let (v, rest) = buf.split_at(len);
            *buf = rest;
            Some((field, Some(v)))
        }
        _ => None,
    }
}

/// PBNode { 2: repeated PBLink { 1: Hash bytes, 2: Name, 3: Tsize }, 1: Data }.
fn dag_pb_links(data: &[u8]) -> Result<Vec<Cid>, DagError> {
    const BAD: DagError = DagError::Malformed("dag-pb");
    let mut out = Vec::new();
    let mut buf = data;
    while !buf.is_empty() {
        let (field, value) = pb_field(&mut buf).ok_or(BAD)?;
        let (2, Some(mut link)) = (field, value) else {
            continue;
        };
        let mut hash = None;
        while !link.is_empty() {
            if let (1, Some(h)) = pb_field(&mut link).ok_or(BAD)? {
                hash = Some(h);
            }
        }
        let hash = hash.ok_or(BAD)?;
        out.push(Cid::try_from(hash).map_err(|_| BAD)?);
    }
    Ok(out)
}

// ------------------------------------------------------------------ dag-cbor

/// Walks the CBOR items iteratively, collecting tag-42 links (a byte string holding
/// 0x00 then the binary CID). `pending` counts the items still owed by open arrays and
/// maps; a declared length larger than the data simply runs out of bytes.
fn dag_cbor_links(data: &[u8]) -> Result<Vec<Cid>, DagError> {
    const BAD: DagError = DagError::Malformed("dag-cbor");
    let mut out = Vec::new();
    let mut buf = data;
    let mut pending: u64 = 1;
    let mut link_next = false;
    while pending > 0 {
        pending -= 1;
        let (&first, rest) = buf.split_first().ok_or(BAD)?;
        buf = rest;
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                if buf.len() < n {
                    return Err(BAD);
                }
                let (b, rest) = buf.split_at(n);
                buf = rest;
                b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
            }
            // Indefinite lengths and reserved values are not dag-cbor.
            _ => return Err(BAD),
        };
        let is_link = std::mem::take(&mut link_next);
        match major {
            0 | 1 | 7 => {
                if is_link {
                    return Err(BAD);
                }
            }
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| BAD)?;
                if buf.len() < len {
                    return Err(BAD);
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                if is_link {
                    match (major, bytes.split_first()) {
                        (2, Some((0, cid))) => out.push(Cid::try_from(cid).map_err(|_| BAD)?),
                        _ => return Err(BAD),
                    }
                }
            }
            4 | 5 => {
                if is_link {
                    return Err(BAD);
                }
                let items = if major == 5 {
                    arg.checked_mul(2).ok_or(BAD)?
                } else {
                    arg
                };
                // Every item takes at least one byte.
                if items > buf.len() as u64 {
                    return Err(BAD);
                }
                pending += items;
            }
            6 => {
                if is_link {
                    return Err(BAD);
                }
                link_next = arg == 42;
                pending += 1;
            }
            _ => unreachable!("three bits"),
        }
    }
    if !buf.is_empty() {
        return Err(BAD);
    }
    Ok(out)
}

// ------------------------------------------------------------------ dag-json

/// A link is `{"/": "<cid string>"}`; `{"/": {"bytes": ...}}` is bytes, not a link.
fn dag_json_links(data: &[u8]) -> Result<Vec<Cid>, DagError> {
    const BAD: DagError = DagError::Malformed("dag-json");
    // serde_json bounds nesting at 128, so parsing cannot overflow the stack.
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|_| BAD)?;
    let mut out = Vec::new();
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if map.len() == 1
                    && let Some(serde_json::Value::String(s)) = map.get("/")
                {
                    out.push(s.parse::<Cid>().map_err(|_| BAD)?);
                    continue;
                }
                // Reverse so that links come out in document order.
                stack.extend(map.values().rev());
            }
            serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pb_len;
    use multihash_codetable::{Code, MultihashDigest};

    fn cid(codec: u64, data: &[u8]) -> Cid {
        Cid::new_v1(codec, Code::Sha2_256.digest(data))
    }

    /// A dag-pb node as go-merkledag writes it: links (hash, name, tsize), then data.
    fn pb_node(links: &[Cid], data: &[u8]) -> Vec<u8> {
        let mut node = Vec::new();
        for (i, l) in links.iter().enumerate() {
            let mut link = pb_len(1, &l.to_bytes());
            link.extend(pb_len(2, format!("n{i}").as_bytes()));
            link.extend([3 << 3, 0x96, 0x01]); // Tsize = 150, a varint field
            node.extend(pb_len(2, &link));
        }
        node.extend(pb_len(1, data));
        node
    }

    #[test]
    fn dag_pb_links_in_order_including_cidv0() {
        let a = Cid::new_v0(Code::Sha2_256.digest(b"a")).unwrap();
        let b = cid(RAW, b"b");
        let data = pb_node(&[a, b], b"\x08\x02");
        let root = cid(DAG_PB, &data);
        assert_eq!(links(&root, &data).unwrap(), vec![a, b]);
        assert_eq!(links(&root, &pb_node(&[], b"leaf")).unwrap(), vec![]);
    }

    #[test]
    fn dag_cbor_links_nested_in_maps_and_arrays() {
        let a = cid(RAW, b"a");
        let b = cid(DAG_CBOR, b"b");
        let link = |c: &Cid| {
            let bytes = c.to_bytes();
            let mut v = vec![0xd8, 42, 0x58, (bytes.len() + 1) as u8, 0x00];
            v.extend(bytes);
            v
        };
        // {"a": link(a), "list": [1, "x", link(b), -1, 1.5f64, null]}
        let mut data = vec![0xa2, 0x61, b'a'];
        data.extend(link(&a));
        data.extend([0x64, b'l', b'i', b's', b't', 0x86, 0x01, 0x61, b'x']);
        data.extend(link(&b));
        data.extend([0x20, 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xf6]);
        let root = cid(DAG_CBOR, &data);
        assert_eq!(links(&root, &data).unwrap(), vec![a, b]);
    }

    #[test]
    fn dag_cbor_hostile_input_is_refused_cheaply() {
        let root = cid(DAG_CBOR, b"x");
        // An array claiming 2^63 items, a map claiming u64::MAX pairs, truncated
        // strings, indefinite lengths, trailing bytes, a tag-42 on a non-bytes item.
        for bad in [
            &[0x9b, 0x80, 0, 0, 0, 0, 0, 0, 0][..],
            &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x58, 0x10, 0x00],
            &[0x9f, 0xff],
            &[0x01, 0x01],
            &[0xd8, 42, 0x01],
            &[0xd8, 42, 0x42, 0x01, 0x02],
            &[],
        ] {
            assert!(links(&root, bad).is_err(), "{bad:?}");
        }
        // Deep nesting is iterative: 100k nested arrays do not touch the stack.
        let mut deep = vec![0x81; 100_000];
        deep.push(0x01);
        assert_eq!(links(&root, &deep).unwrap(), vec![]);
    }

    #[test]
    fn dag_json_links_and_bytes() {
        let a = cid(RAW, b"a");
        let b = cid(DAG_JSON, b"b");
        let data = format!(
            r#"{{"x":{{"/":"{a}"}},"y":[{{"/":{{"bytes":"AAEC"}}}},{{"/":"{b}"}}],"z":1}}"#
        );
        let root = cid(DAG_JSON, data.as_bytes());
        assert_eq!(links(&root, data.as_bytes()).unwrap(), vec![a, b]);
        assert!(links(&root, br#"{"/":"not a cid"}"#).is_err());
        assert!(links(&root, b"{").is_err());
    }

    #[test]
    fn raw_has_no_links_and_unknown_codecs_are_not_followed() {
        assert_eq!(links(&cid(RAW, b"x"), b"anything").unwrap(), vec![]);
        assert_eq!(
            links(&cid(0x78, b"x"), b"x"),
            Err(DagError::UnsupportedCodec(0x78))
        );
        assert!(links(&cid(DAG_PB, b"x"), &[0x12, 0x05, 0x0a]).is_err());
    }
}
