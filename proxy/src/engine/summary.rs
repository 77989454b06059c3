//! A one-line account of a bitswap message for debug logs (no payloads).

use crate::bitswap::{Message, PresenceKind, WantKind};

pub struct Summary<'a>(pub &'a Message);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        let cancels = m.wants.iter().filter(|w| w.cancel).count();
        let haves = m
            .wants
            .iter()
            .filter(|w| !w.cancel && w.kind == WantKind::Have)
            .count();
        let dont = m
            .presences
            .iter()
            .filter(|p| p.kind == PresenceKind::DontHave)
            .count();
        write!(
            f,
            "full={} want_block={} want_have={} cancel={} blocks={} have={} dont_have={}",
            m.full,
            m.wants.len() - cancels - haves,
            haves,
            cancels,
            m.blocks.len(),
            m.presences.len() - dont,
            dont
        )
    }
}
