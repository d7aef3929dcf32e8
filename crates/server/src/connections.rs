//! Bookkeeping of client connections for the accept loop: how many each source holds, and
//! when a connection last served a request (so that idle ones are closed).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whom a connection is charged to: an IPv4 address, or an IPv6 /64 (one subscriber's prefix;
/// a host picks freely among its 2^64 addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

/// The source an address counts against. IPv4-mapped IPv6 addresses (a dual-stack listener)
/// count as the IPv4 address they carry.
pub fn source_key(ip: IpAddr) -> SourceKey {
    match ip {
        IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SourceKey::V4(v4.octets()),
            None => SourceKey::V6Prefix(prefix_64(&v6)),
        },
    }
}

fn prefix_64(v6: &Ipv6Addr) -> [u8; 8] {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&v6.octets()[..8]);
    prefix
}

/// Open connections per source, each at most `cap`.
#[derive(Debug)]
pub struct SourceSlots {
    cap: usize,
    open: Arc<Mutex<HashMap<SourceKey, usize>>>,
}

/// One connection charged to its source until dropped.
#[derive(Debug)]
pub struct SourceSlot {
    key: SourceKey,
    open: Arc<Mutex<HashMap<SourceKey, usize>>>,
}

fn lock(m: &Mutex<HashMap<SourceKey, usize>>) -> MutexGuard<'_, HashMap<SourceKey, usize>> {
    // The map holds plain counts: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SourceSlots {
    pub fn new(cap: usize) -> Self {
        SourceSlots {
            cap,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `key`, or `None` when it holds `cap` already.
    pub fn try_acquire(&self, key: SourceKey) -> Option<SourceSlot> {
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            key,
            open: self.open.clone(),
        })
    }

    #[cfg(test)]
    fn open(&self, key: SourceKey) -> usize {
        lock(&self.open).get(&key).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Sources that left take no memory.
                open.remove(&self.key);
            }
        }
    }
}

/// Whether a connection is serving a request, and since when it has not been.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    busy: AtomicUsize,
    /// Milliseconds after `started` at which the last request finished; `u64::MAX`: none yet.
    idle_since_ms: AtomicU64,
}

/// A request in progress on its connection until dropped (also when it is cancelled).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(u64::MAX),
        })
    }

    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the connection becomes idle for too long if nothing happens in the meantime, or
    /// `None` while a request is in progress. Before its first request a connection may wait
    /// `first_request` after it started; after one, `idle` after the last one finished.
    pub fn idle_deadline(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(match self.idle_since_ms.load(Ordering::SeqCst) {
            u64::MAX => self.started + first_request,
            ms => self.started + Duration::from_millis(ms) + idle,
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.idle_since_ms.store(ms, Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(s: &str) -> SourceKey {
        source_key(s.parse().unwrap())
    }

    #[test]
    fn ipv4_sources_are_single_addresses() {
        assert_eq!(key("192.0.2.7"), SourceKey::V4([192, 0, 2, 7]));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_ne!(key("127.0.0.1"), key("127.0.0.2"));
    }

    #[test]
    fn ipv6_sources_are_64_bit_prefixes() {
        let a = key("2001:db8:1:2::1");
        assert_eq!(a, key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(a, key("2001:db8:1:2:1234:5678:9abc:def0"));
        assert_eq!(a, SourceKey::V6Prefix([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]));
        assert_ne!(a, key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), SourceKey::V6Prefix([0; 8]));
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(
            source_key(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped())),
            SourceKey::V4([10, 1, 2, 3])
        );
        // Two mapped addresses are two sources, not one ::ffff:0:0/64 bucket.
        assert_ne!(key("::ffff:192.0.2.7"), key("::ffff:192.0.2.8"));
    }

    #[test]
    fn a_source_holds_at_most_its_cap_until_a_slot_is_released() {
        let slots = SourceSlots::new(2);
        let a = key("192.0.2.1");
        let b = key("2001:db8::1");
        let first = slots.try_acquire(a).unwrap();
        let _second = slots.try_acquire(a).unwrap();
        assert!(slots.try_acquire(a).is_none());
        // Another source is unaffected, and the same /64 shares one bucket.
        let _b1 = slots.try_acquire(b).unwrap();
        let _b2 = slots.try_acquire(key("2001:db8::2")).unwrap();
        assert!(slots.try_acquire(key("2001:db8::ffff")).is_none());
        assert_eq!((slots.open(a), slots.open(b)), (2, 2));
        drop(first);
        assert_eq!(slots.open(a), 1);
        let _third = slots.try_acquire(a).unwrap();
        assert!(slots.try_acquire(a).is_none());
    }

    #[test]
    fn released_sources_are_forgotten() {
        let slots = SourceSlots::new(3);
        let held: Vec<_> = (0..3)
            .map(|i| slots.try_acquire(SourceKey::V4([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(slots.sources(), 3);
        drop(held);
        assert_eq!(slots.sources(), 0);
    }

    #[test]
    fn idle_deadline_follows_requests() {
        let activity = Activity::new();
        let first = Duration::from_secs(5);
        let idle = Duration::from_secs(60);
        let before = activity.idle_deadline(first, idle).unwrap();
        assert_eq!(before, activity.started + first);
        let busy = activity.begin();
        let also_busy = activity.begin();
        assert_eq!(activity.idle_deadline(first, idle), None);
        drop(busy);
        assert_eq!(activity.idle_deadline(first, idle), None);
        drop(also_busy);
        let after = activity.idle_deadline(first, idle).unwrap();
        assert!(after >= activity.started + idle, "{after:?}");
        assert!(after <= Instant::now() + idle);
    }
}
