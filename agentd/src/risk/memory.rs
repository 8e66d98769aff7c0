//! Bounded per-agent memory: what an agent has been seen to do, as 64-bit keys.
//!
//! Destinations and binaries are remembered as hashes (no strings are kept), in a set with a
//! fixed capacity. When the set is full, inserting evicts by the CLOCK algorithm (second
//! chance), an approximation of least-recently-used: each key has a "used" bit that a lookup
//! sets; the eviction hand sweeps the slots, clearing set bits and evicting the first key whose
//! bit is clear. A lookup is one hash-map probe; an eviction is amortised constant time.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
};

/// A set of at most `capacity` keys with CLOCK eviction.
#[derive(Debug)]
pub struct BoundedSet {
    /// `(key, used)` per slot; grows to `capacity`, then slots are reused.
    slots: Vec<(u64, bool)>,
    index: HashMap<u64, usize>,
    hand: usize,
    capacity: usize,
}

impl BoundedSet {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "validated by RiskConfig::validate");
        Self {
            slots: Vec::new(),
            index: HashMap::new(),
            hand: 0,
            capacity,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether `key` is in the set; a hit marks it recently used.
    pub fn touch(&mut self, key: u64) -> bool {
        match self.index.get(&key) {
            Some(&slot) => {
                self.slots[slot].1 = true;
                true
            }
            None => false,
        }
    }

    /// Adds `key` (not yet present), returning the key it evicted, if the set was full.
    pub fn insert(&mut self, key: u64) -> Option<u64> {
        debug_assert!(!self.index.contains_key(&key));
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push((key, false));
            return None;
        }
        loop {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            let (old, used) = &mut self.slots[slot];
            if *used {
                *used = false;
                continue;
            }
            let evicted = *old;
            *old = key;
            self.index.remove(&evicted);
            self.index.insert(key, slot);
            return Some(evicted);
        }
    }
}

/// The key of a destination: its domain name when the connect has one (case-insensitive,
/// without a trailing dot), its address otherwise. The port is not part of it.
pub fn destination_key(address: IpAddr, domain: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    if let Some(domain) = domain {
        hasher.write_u8(b'd');
        for byte in domain.trim_end_matches('.').bytes() {
            hasher.write_u8(byte.to_ascii_lowercase());
        }
    } else {
        hasher.write_u8(b'a');
        address.hash(&mut hasher);
    }
    hasher.finish()
}

/// The key of an executed binary: its inode (device and number) when known, its file name
/// otherwise.
pub fn binary_key(dev: u32, ino: u64, filename: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    if ino == 0 {
        hasher.write_u8(b'n');
        filename.hash(&mut hasher);
    } else {
        hasher.write_u8(b'i');
        hasher.write_u32(dev);
        hasher.write_u64(ino);
    }
    hasher.finish()
}

/// The key of any hashable value (threat-intel indicators, for de-duplication).
pub fn key_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_set_evicts_the_key_not_used_since_the_hand_passed() {
        let mut set = BoundedSet::new(3);
        assert_eq!(set.insert(1), None);
        assert_eq!(set.insert(2), None);
        assert_eq!(set.insert(3), None);
        assert!(set.touch(1));
        assert!(set.touch(3));
        // 1 is used (second chance), 2 is not: 2 goes.
        assert_eq!(set.insert(4), Some(2));
        assert!(!set.touch(2));
        assert_eq!(set.len(), 3);
        // The hand cleared 1's bit on its way and stopped after 4's slot; 3 keeps its bit.
        assert!(set.touch(4));
        assert_eq!(set.insert(5), Some(1));
        assert!(set.touch(3) && set.touch(4) && set.touch(5));
        assert!(!set.touch(1));
    }

    #[test]
    fn destination_keys_ignore_case_trailing_dot_and_port_but_not_names() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            destination_key(a, Some("API.example.com.")),
            destination_key(b, Some("api.example.com"))
        );
        assert_ne!(
            destination_key(a, Some("api.example.com")),
            destination_key(a, Some("www.example.com"))
        );
        assert_ne!(destination_key(a, None), destination_key(b, None));
        assert_eq!(destination_key(a, None), destination_key(a, None));
    }

    #[test]
    fn binaries_are_keyed_by_inode_when_known() {
        assert_eq!(binary_key(8, 42, "/usr/bin/a"), binary_key(8, 42, "/tmp/b"));
        assert_ne!(binary_key(8, 42, "/x"), binary_key(8, 43, "/x"));
        assert_ne!(binary_key(0, 0, "/x"), binary_key(0, 0, "/y"));
    }
}
