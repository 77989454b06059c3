//! What a trustless-gateway request asks for: the response format (the `format`
//! query parameter first, then `Accept`), and for a CAR its scope, block order and
//! duplicates. Pure, so every rule is unit-tested.

/// The two trustless response types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Car(CarParams),
}

/// Which blocks a CAR holds, from the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The root block only.
    Block,
    /// What it takes to read the root's entity: a whole UnixFS file, a directory's
    /// own blocks (a sharded one's shards); for other data, the root block.
    Entity,
    /// The whole DAG below the root.
    All,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Block => "block",
            Scope::Entity => "entity",
            Scope::All => "all",
        }
    }
}

/// A CAR's parameters. Blocks always come in depth-first order (`order=dfs`, which
/// also satisfies a client that accepts any order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarParams {
    pub scope: Scope,
    /// Send a block every time the walk meets it (`dups=y`), or once.
    pub dups: bool,
}

impl CarParams {
    /// The response's `Content-Type`, naming every parameter (as the spec asks).
    pub fn content_type(&self) -> String {
        let dups = if self.dups { "y" } else { "n" };
        format!("application/vnd.ipld.car; version=1; order=dfs; dups={dups}")
    }
}

/// Why a request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed, or no response type asked for at all.
    BadRequest(String),
    /// 406: a response type or variant this gateway does not serve.
    NotAcceptable(String),
}

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";

/// Formats of the path gateway that a trustless gateway does not serve (406, not 400:
/// they are real formats).
const OTHER_FORMATS: [&str; 7] = [
    "dag-json",
    "dag-cbor",
    "json",
    "cbor",
    "tar",
    "ipns-record",
    "html",
];

/// The response a request asks for. `query` is the URL's parameters in order;
/// `accept` the `Accept` header, if any.
pub fn negotiate(query: &[(String, String)], accept: Option<&str>) -> Result<Format, Refusal> {
    let param = |name: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let from_accept = accept.and_then(best_of_accept);
    let is_car = match param("format") {
        Some("raw") => false,
        Some("car") => true,
        Some(f) if OTHER_FORMATS.contains(&f) => {
            return Err(Refusal::NotAcceptable(format!(
                "format={f} is not served by a trustless gateway; use raw or car"
            )));
        }
        Some(f) => return Err(Refusal::BadRequest(format!("unknown format {f:?}"))),
        None => match (&from_accept, accept) {
            (Some(Accepted::Raw), _) => false,
            (Some(Accepted::Car { .. }), _) => true,
            (None, None) => {
                return Err(Refusal::BadRequest(
                    "ask for a raw block or a CAR: ?format=raw|car or Accept: application/vnd.ipld.raw|car".into(),
                ));
            }
            (None, Some(a)) => {
                return Err(Refusal::NotAcceptable(format!(
                    "none of {a:?} is served here; accept {RAW} or {CAR}"
                )));
            }
        },
    };
    if !is_car {
        return Ok(Format::Raw);
    }
    // The CAR's variant: URL parameters first, then the Accept header's.
    let accepted_dups = match from_accept {
        Some(Accepted::Car { dups }) => dups,
        _ => None,
    };
    if let Some(v) = param("car-version")
        && v != "1"
    {
        return Err(Refusal::NotAcceptable(format!("car-version={v}: only 1")));
    }
    if let Some(o) = param("car-order")
        && o != "dfs"
        && o != "unk"
    {
        return Err(Refusal::NotAcceptable(format!(
            "car-order={o}: only dfs (or unk)"
        )));
    }
    let dups = match param("car-dups") {
        Some("y") => true,
        Some("n") => false,
        Some(d) => return Err(Refusal::NotAcceptable(format!("car-dups={d}: y or n"))),
        // Unasked, no duplicates: the spec's choice for a gateway that controls it.
        None => accepted_dups.unwrap_or(false),
    };
    let scope = match param("dag-scope") {
        None | Some("all") => Scope::All,
        Some("entity") => Scope::Entity,
        Some("block") => Scope::Block,
        Some(s) => return Err(Refusal::BadRequest(format!("unknown dag-scope {s:?}"))),
    };
    // entity-bytes implies the entity; the whole entity is sent (a superset of the
    // blocks the range needs, which a verifying client accepts).
    let scope = if param("entity-bytes").is_some() && scope == Scope::All {
        Scope::Entity
    } else {
        scope
    };
    Ok(Format::Car(CarParams { scope, dups }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepted {
    Raw,
    /// `dups` if the client named it.
    Car {
        dups: Option<bool>,
    },
}

/// The acceptable media range with the highest `q` (the first among equals), or
/// none. CAR ranges naming a variant this gateway cannot make are passed over.
fn best_of_accept(header: &str) -> Option<Accepted> {
    let mut best: Option<(u32, Accepted)> = None;
    for range in header.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut q, mut ok, mut dups) = (1000u32, true, None);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = parse_q(v).unwrap_or(0),
                "version" => ok &= v == "1",
                "order" => ok &= v == "dfs" || v == "unk",
                "dups" => match v {
                    "y" => dups = Some(true),
                    "n" => dups = Some(false),
                    _ => ok = false,
                },
                _ => {}
            }
        }
        let accepted = match media.as_str() {
            RAW => Accepted::Raw,
            CAR if ok => Accepted::Car { dups },
            _ => continue,
        };
        if q > 0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, accepted));
        }
    }
    best.map(|(_, a)| a)
}

/// An HTTP quality value in thousandths.
fn parse_q(v: &str) -> Option<u32> {
    let f: f32 = v.parse().ok()?;
    (0.0..=1.0)
        .contains(&f)
        .then(|| (f * 1000.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn car(scope: Scope, dups: bool) -> Format {
        Format::Car(CarParams { scope, dups })
    }

    #[test]
    fn format_parameter_wins_over_accept() {
        let raw = q(&[("format", "raw")]);
        assert_eq!(negotiate(&raw, Some(CAR)), Ok(Format::Raw));
        let c = q(&[("format", "car")]);
        assert_eq!(negotiate(&c, Some(RAW)), Ok(car(Scope::All, false)));
        assert_eq!(negotiate(&[], Some(RAW)), Ok(Format::Raw));
        assert_eq!(negotiate(&[], Some(CAR)), Ok(car(Scope::All, false)));
    }

    #[test]
    fn missing_or_foreign_types_are_refused() {
        assert!(matches!(negotiate(&[], None), Err(Refusal::BadRequest(_))));
        assert!(matches!(
            negotiate(&[], Some("text/html,*/*")),
            Err(Refusal::NotAcceptable(_))
        ));
        assert!(matches!(
            negotiate(&q(&[("format", "dag-json")]), None),
            Err(Refusal::NotAcceptable(_))
        ));
        assert!(matches!(
            negotiate(&q(&[("format", "zip")]), None),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn accept_takes_the_best_q_and_skips_unmakeable_variants() {
        let h = "application/vnd.ipld.car;version=2, application/vnd.ipld.raw;q=0.5";
        assert_eq!(negotiate(&[], Some(h)), Ok(Format::Raw));
        let h = "application/vnd.ipld.raw;q=0.4, application/vnd.ipld.car; version=1; order=dfs; dups=y;q=0.9";
        assert_eq!(negotiate(&[], Some(h)), Ok(car(Scope::All, true)));
        let h = "application/vnd.ipld.car;order=foo";
        assert!(matches!(
            negotiate(&[], Some(h)),
            Err(Refusal::NotAcceptable(_))
        ));
        let h = "application/vnd.ipld.raw;q=0";
        assert!(negotiate(&[], Some(h)).is_err(), "q=0 is a refusal");
    }

    #[test]
    fn car_parameters_from_the_url_first() {
        let c = q(&[("format", "car"), ("dag-scope", "block"), ("car-dups", "y")]);
        assert_eq!(negotiate(&c, None), Ok(car(Scope::Block, true)));
        let c = q(&[("format", "car"), ("car-dups", "n")]);
        let accept = "application/vnd.ipld.car; dups=y";
        assert_eq!(negotiate(&c, Some(accept)), Ok(car(Scope::All, false)));
        let c = q(&[("dag-scope", "entity"), ("car-order", "unk")]);
        assert_eq!(negotiate(&c, Some(CAR)), Ok(car(Scope::Entity, false)));
        let c = q(&[("format", "car"), ("entity-bytes", "0:*")]);
        assert_eq!(negotiate(&c, None), Ok(car(Scope::Entity, false)));
        for bad in [
            ("car-version", "2"),
            ("car-order", "bfs"),
            ("car-dups", "x"),
        ] {
            let c = q(&[("format", "car"), bad]);
            assert!(
                matches!(negotiate(&c, None), Err(Refusal::NotAcceptable(_))),
                "{bad:?}"
            );
        }
        let c = q(&[("format", "car"), ("dag-scope", "most")]);
        assert!(matches!(negotiate(&c, None), Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn car_content_type_names_every_parameter() {
        let p = CarParams {
            scope: Scope::All,
            dups: false,
        };
        assert_eq!(
            p.content_type(),
            "application/vnd.ipld.car; version=1; order=dfs; dups=n"
        );
    }
}
