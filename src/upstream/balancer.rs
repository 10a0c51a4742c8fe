//! Picking a target: smooth weighted round robin, least-request (power of two choices), weighted
//! random and consistent hashing on a ring.
//!
//! Every algorithm is lock-free on the request path: round robin walks a precomputed smooth
//! sequence with one atomic counter, the ring is an immutable sorted vector.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::Target;

/// What consistent hashing hashes.
#[derive(Debug, Clone)]
pub enum HashOn {
    /// A request header.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client IP.
    ClientIp,
}

/// A load-balancing algorithm with its state.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin over a precomputed sequence.
    RoundRobin {
        /// Target indices in smooth weighted order.
        sequence: Box<[u32]>,
        /// Position in `sequence`.
        next: AtomicUsize,
    },
    /// Fewest in-flight requests (relative to weight) of two random picks.
    LeastRequest,
    /// Weighted random.
    Random {
        /// Running sum of weights per target.
        cumulative: Box<[u32]>,
    },
    /// Consistent hashing on a ring of virtual nodes.
    ConsistentHash {
        /// What to hash.
        on: HashOn,
        /// (point, target index), sorted by point.
        ring: Box<[(u64, u32)]>,
    },
}

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 100;

impl Balancer {
    /// Smooth weighted round robin (the nginx algorithm) unrolled into its repeating sequence.
    pub fn round_robin(weights: &[u32]) -> Self {
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / divisor)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
                .unwrap_or((0, &0));
            current[best] -= total;
            sequence.push(best as u32);
        }
        Balancer::RoundRobin {
            sequence: sequence.into_boxed_slice(),
            // Start each worker's view at a random point so a fleet restarted at once does not
            // send its first requests to the same target.
            next: AtomicUsize::new(fastrand::usize(..total.max(1) as usize)),
        }
    }

    /// Weighted random.
    pub fn random(weights: &[u32]) -> Self {
        let mut sum = 0;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += w;
                sum
            })
            .collect();
        Balancer::Random { cumulative }
    }

    /// A ring with points placed by hashing each target's URL.
    pub fn consistent_hash(on: HashOn, targets: &[(String, u32)]) -> Self {
        let mut ring = Vec::new();
        for (i, (url, weight)) in targets.iter().enumerate() {
            for point in 0..weight * RING_POINTS_PER_WEIGHT {
                let mut h = Fnv::new();
                h.write(url.as_bytes());
                h.write(b"#");
                h.write(&point.to_le_bytes());
                ring.push((h.finish(), i as u32));
            }
        }
        ring.sort_unstable();
        Balancer::ConsistentHash {
            on,
            ring: ring.into_boxed_slice(),
        }
    }

    /// Picks a target index. `avoid` names a target to skip if another exists (used on retries).
    pub fn pick(
        &self,
        targets: &[Arc<Target>],
        headers: &HeaderMap,
        client_ip: IpAddr,
        avoid: Option<usize>,
    ) -> usize {
        let n = targets.len();
        if n <= 1 {
            return 0;
        }
        let chosen = match self {
            Balancer::RoundRobin { sequence, next } => {
                let at = next.fetch_add(1, Ordering::Relaxed) % sequence.len();
                sequence[at] as usize
            }
            Balancer::LeastRequest => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| {
                    let t = &targets[i];
                    // Compare in_flight / weight without division.
                    (t.in_flight.load(Ordering::Relaxed) as u64 + 1) * 1000
                        / u64::from(t.weight.max(1))
                };
                if load(a) <= load(b) {
                    a
                } else {
                    b
                }
            }
            Balancer::Random { cumulative } => weighted_random(cumulative),
            Balancer::ConsistentHash { on, ring } => {
                match hash_key(on, headers, client_ip) {
                    Some(h) => {
                        let at = ring.partition_point(|&(p, _)| p < h);
                        ring[at % ring.len()].1 as usize
                    }
                    // No key: spread evenly rather than pile every keyless request on one target.
                    None => fastrand::usize(..n),
                }
            }
        };
        match avoid {
            Some(skip) if skip == chosen => (chosen + 1) % n,
            _ => chosen,
        }
    }
}

impl Balancer {
    /// Like [`pick`](Self::pick), but only among targets in rotation (healthy, not ejected).
    /// With every target out of rotation: any target when `panic`, else `None`.
    ///
    /// The common case (the first choice is in rotation) costs two relaxed loads more than
    /// `pick`. A choice out of rotation is redrawn (round robin moves on in its sequence, so the
    /// sick target's share spreads over the others instead of doubling its neighbour's), the
    /// ring walks on to the next target, and a scan settles the rest.
    pub fn pick_available(
        &self,
        targets: &[Arc<Target>],
        headers: &HeaderMap,
        client_ip: IpAddr,
        avoid: Option<usize>,
        panic: bool,
    ) -> Option<usize> {
        let n = targets.len();
        let ok = |i: usize| targets[i].state.available(&targets[i].url);
        let first = self.pick(targets, headers, client_ip, avoid);
        if ok(first) {
            return Some(first);
        }
        if n > 1 {
            if let Balancer::ConsistentHash { on, ring } = self {
                if let Some(h) = hash_key(on, headers, client_ip) {
                    let at = ring.partition_point(|&(p, _)| p < h);
                    let found = (0..ring.len())
                        .map(|k| ring[(at + k) % ring.len()].1 as usize)
                        .find(|&i| Some(i) != avoid && ok(i));
                    if found.is_some() {
                        return found;
                    }
                }
            } else {
                for _ in 0..n {
                    let i = self.pick(targets, headers, client_ip, avoid);
                    if ok(i) {
                        return Some(i);
                    }
                }
            }
            let start = fastrand::usize(..n);
            let scan = (0..n).map(|k| (start + k) % n);
            if let Some(i) = scan.clone().find(|&i| Some(i) != avoid && ok(i)) {
                return Some(i);
            }
            if let Some(i) = avoid.filter(|&i| ok(i)) {
                return Some(i);
            }
        }
        panic.then_some(first)
    }
}

fn weighted_random(cumulative: &[u32]) -> usize {
    let total = *cumulative.last().unwrap_or(&1);
    let r = fastrand::u32(..total.max(1));
    cumulative.partition_point(|&c| c <= r)
}

fn hash_key(on: &HashOn, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
    let mut h = Fnv::new();
    match on {
        HashOn::Header(name) => h.write(headers.get(name)?.as_bytes()),
        HashOn::Cookie(name) => h.write(cookie_value(headers, name)?.as_bytes()),
        HashOn::ClientIp => match client_ip {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        },
    }
    Some(h.finish())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, so every gateway node in a fleet places
/// the same keys on the same targets.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // FNV alone clusters similar keys; a final mix spreads them over the ring.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Address, Protocol};
    use std::net::Ipv4Addr;

    fn targets(weights: &[u32]) -> Vec<Arc<Target>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Target {
                    id: i as u64,
                    url: format!("http://10.0.0.{i}:80").into(),
                    authority: http::HeaderValue::from_static("x"),
                    address: Address::Ip(([127, 0, 0, 1], 1).into()),
                    protocol: Protocol::Http1,
                    tls: None,
                    weight: *w,
                    in_flight: AtomicUsize::new(0),
                    state: Arc::new(crate::upstream::TargetState::new(None)),
                })
            })
            .collect()
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let b = Balancer::round_robin(&[5, 1, 1]);
        let Balancer::RoundRobin { sequence, .. } = &b else {
            unreachable!()
        };
        assert_eq!(&**sequence, &[0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_shares_follow_weights() {
        let t = targets(&[2, 1]);
        let b = Balancer::round_robin(&[2, 1]);
        let mut counts = [0; 2];
        for _ in 0..300 {
            counts[b.pick(&t, &HeaderMap::new(), IP, None)] += 1;
        }
        assert_eq!(counts, [200, 100]);
    }

    #[test]
    fn least_request_prefers_idle_target() {
        let t = targets(&[1, 1]);
        t[0].in_flight.store(50, Ordering::Relaxed);
        let b = Balancer::LeastRequest;
        for _ in 0..50 {
            assert_eq!(b.pick(&t, &HeaderMap::new(), IP, None), 1);
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let t = targets(&[1, 1, 1]);
        let urls: Vec<(String, u32)> = t.iter().map(|t| (t.url.to_string(), 1)).collect();
        let b = Balancer::consistent_hash(HashOn::Header(HeaderName::from_static("x-user")), &urls);
        let mut seen = [0; 3];
        for user in 0..300 {
            let mut h = HeaderMap::new();
            h.insert("x-user", user.to_string().parse().unwrap());
            let first = b.pick(&t, &h, IP, None);
            assert_eq!(first, b.pick(&t, &h, IP, None));
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    #[test]
    fn weighted_random_respects_zero_share() {
        let b = Balancer::random(&[1, 0]);
        let t = targets(&[1, 0]);
        for _ in 0..100 {
            assert_eq!(b.pick(&t, &HeaderMap::new(), IP, None), 0);
        }
    }

    #[test]
    fn targets_out_of_rotation_are_skipped_and_panic_mode_uses_them_all() {
        use std::sync::atomic::Ordering::Relaxed;
        let t = targets(&[1, 1, 1]);
        t[1].state.healthy.store(false, Relaxed);
        let urls: Vec<(String, u32)> = t.iter().map(|t| (t.url.to_string(), 1)).collect();
        let hash = Balancer::consistent_hash(HashOn::ClientIp, &urls);
        for b in [
            Balancer::round_robin(&[1, 1, 1]),
            Balancer::LeastRequest,
            hash,
        ] {
            let mut counts = [0; 3];
            for _ in 0..300 {
                counts[b
                    .pick_available(&t, &HeaderMap::new(), IP, None, false)
                    .unwrap()] += 1;
            }
            assert_eq!(counts[1], 0, "{b:?}: {counts:?}");
            // Retrying with target 0 to avoid goes to the other healthy one.
            assert_eq!(
                b.pick_available(&t, &HeaderMap::new(), IP, Some(0), false),
                Some(2)
            );
        }
        let b = Balancer::round_robin(&[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b
                .pick_available(&t, &HeaderMap::new(), IP, None, false)
                .unwrap()] += 1;
        }
        assert_eq!(
            counts,
            [150, 0, 150],
            "the sick target's share is spread evenly"
        );
        for s in &t {
            s.state.healthy.store(false, Relaxed);
        }
        assert_eq!(
            b.pick_available(&t, &HeaderMap::new(), IP, None, false),
            None
        );
        assert!(b
            .pick_available(&t, &HeaderMap::new(), IP, None, true)
            .is_some());
    }

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; session=abc; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h, "session"), Some("abc"));
        assert_eq!(cookie_value(&h, "nope"), None);
    }
}
