//! A small seeded generator (xorshift64*) for jitter, connection ids and
//! call ids: not cryptographic, it only has to keep clients apart, and
//! works on plain-http pages where `crypto.randomUUID` does not exist.

use alloc::string::String;

use crate::text::push_hex;

/// Seeded from the browser's `Math.random`; tests pick the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator; any seed works (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A UUID-v4-shaped id (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let mut id = String::with_capacity(36);
        let parts = [
            (a >> 32, 8, "-"),
            ((a >> 16) & 0xffff, 4, "-4"),
            (a & 0xfff, 3, "-"),
            (8 | (b >> 62), 1, ""),
            ((b >> 48) & 0xfff, 3, "-"),
            (b & 0xffff_ffff_ffff, 12, ""),
        ];
        for (value, width, then) in parts {
            push_hex(&mut id, value, width);
            id.push_str(then);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_shaped_and_differ() {
        let mut r = Rng::new(42);
        let (a, b) = (r.uuid(), r.uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
        let units: Vec<f64> = (0..1000).map(|_| r.unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = units.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
