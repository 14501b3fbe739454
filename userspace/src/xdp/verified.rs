//! Userspace's copy of the verified sources' Bloom filter (`maps::VERIFIED_FILTER`): which
//! words a new source changes, and which a rebuild from the live entries changes. The kernel
//! never writes the filter, so this copy is the truth and only changed words are written.

use floodgate_common::{VERIFIED_FILTER_WORDS, verified_filter_bit};

pub struct VerifiedFilter {
    words: Vec<u64>,
}

impl Default for VerifiedFilter {
    fn default() -> Self {
        Self {
            words: vec![0; VERIFIED_FILTER_WORDS as usize],
        }
    }
}

/// `addr`'s bit, with the words read as the program reads them (native-endian `u32`s).
fn bit(addr: &[u8; 16]) -> (u32, u64) {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    verified_filter_bit([w(0), w(4), w(8), w(12)])
}

impl VerifiedFilter {
    /// Sets `addr`'s bit; the word to write, if it changed.
    pub fn insert(&mut self, addr: &[u8; 16]) -> Option<(u32, u64)> {
        let (i, mask) = bit(addr);
        let word = self.words.get_mut(i as usize)?;
        if *word & mask != 0 {
            return None;
        }
        *word |= mask;
        Some((i, *word))
    }

    /// Becomes the filter of exactly `live` (bits of expired or evicted sources cleared);
    /// returns the words that changed, with their new values.
    pub fn rebuild<'a>(&mut self, live: impl IntoIterator<Item = &'a [u8; 16]>) -> Vec<(u32, u64)> {
        let mut next = vec![0u64; self.words.len()];
        for addr in live {
            let (i, mask) = bit(addr);
            if let Some(w) = next.get_mut(i as usize) {
                *w |= mask;
            }
        }
        let changed = self
            .words
            .iter()
            .zip(&next)
            .enumerate()
            .filter(|(_, (old, new))| old != new)
            .filter_map(|(i, (_, new))| Some((u32::try_from(i).ok()?, *new)))
            .collect();
        self.words = next;
        changed
    }

    /// Whether `addr`'s bit is set (what the program checks first).
    pub fn may_contain(&self, addr: &[u8; 16]) -> bool {
        let (i, mask) = bit(addr);
        self.words.get(i as usize).is_some_and(|w| w & mask != 0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(a: u32) -> [u8; 16] {
        Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    #[test]
    fn an_inserted_source_is_found_and_a_rebuild_clears_only_what_left() {
        let mut f = VerifiedFilter::default();
        let (a, b) = (v4(0xc633_6407), v4(0xcb00_7109));
        assert!(f.insert(&a).is_some(), "a new bit is a word to write");
        assert!(f.insert(&a).is_none(), "a bit already set writes nothing");
        f.insert(&b);
        assert!(f.may_contain(&a) && f.may_contain(&b));
        let changed = f.rebuild([&b]);
        assert!(!f.may_contain(&a) || bit(&a) == bit(&b));
        assert!(f.may_contain(&b), "a live source keeps its bit");
        assert!(changed.len() <= 1, "only a's word changed: {changed:?}");
        assert!(
            f.rebuild([&b]).is_empty(),
            "the same live set changes nothing"
        );
    }

    #[test]
    fn a_full_default_table_sets_few_bits() {
        // The 65,536 addresses of a /16, the default table size: the share of an unverified
        // flood that still pays the LRU lookup is the share of bits set.
        let mut f = VerifiedFilter::default();
        for a in 0..65_536u32 {
            f.insert(&v4(0x0a00_0000 | a));
        }
        let set: u32 = f.words.iter().map(|w| w.count_ones()).sum();
        let share = f64::from(set) / f64::from(VERIFIED_FILTER_WORDS * 64);
        assert!(share < 0.035, "{share}");
        // And random-looking probes from elsewhere mostly miss.
        let hits = (0..100_000u32)
            .filter(|i| f.may_contain(&v4(0xc612_0000 ^ i.wrapping_mul(2_654_435_761))))
            .count();
        assert!(hits < 4_000, "{hits} false positives in 100,000");
    }
}
