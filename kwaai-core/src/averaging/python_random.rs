//! Python's `random.Random` seeded with bytes, as far as hivemind's group key update uses it:
//! `random.Random(group_id).sample(range(n), k)` (CPython 3.11: Lib/random.py,
//! Modules/_randommodule.c). Every member of a group derives its next group bits from it.

use sha2::{Digest, Sha512};

const N: usize = 624;
const M: usize = 397;

/// The Mersenne Twister MT19937 that `random.Random` runs.
pub struct PythonRandom {
    state: [u32; N],
    index: usize,
}

impl PythonRandom {
    /// `random.Random(seed)` for a `bytes` seed (version 2: the seed is the big-endian integer of
    /// `seed + sha512(seed)`).
    pub fn from_bytes(seed: &[u8]) -> PythonRandom {
        let mut number = seed.to_vec();
        number.extend_from_slice(&Sha512::digest(seed));
        let first = number.iter().position(|&b| b != 0).unwrap_or(number.len());
        let number = &number[first..];
        // 32-bit words of the integer, least significant first (`init_by_array`'s key).
        let mut key: Vec<u32> =
            number.rchunks(4).map(|chunk| chunk.iter().fold(0u32, |word, &b| (word << 8) | u32::from(b))).collect();
        if key.is_empty() {
            key.push(0);
        }
        let mut rng = PythonRandom { state: [0; N], index: N };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.state;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            let mt = &mut self.state;
            for k in 0..N {
                let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                mt[k] = mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(bits)` for 1..=32 bits.
    fn getrandbits(&mut self, bits: u32) -> u32 {
        self.next_u32() >> (32 - bits)
    }

    /// `_randbelow(n)` for 1 <= n < 2^32.
    fn randbelow(&mut self, n: u32) -> u32 {
        let bits = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(bits);
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`, with CPython's choice between its pool and set methods.
    pub fn sample_range(&mut self, n: u32, k: usize) -> Vec<u32> {
        assert!(k as u64 <= u64::from(n), "sample larger than the population");
        let mut set_size = 21usize;
        if k > 5 {
            // `4 ** ceil(log(3k, 4))`, with math.log's float division.
            let exponent = (((3 * k) as f64).ln() / 4f64.ln()).ceil() as u32;
            set_size += 4usize.pow(exponent);
        }
        let mut result = Vec::with_capacity(k);
        if n as usize <= set_size {
            let mut pool: Vec<u32> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i as u32) as usize;
                result.push(pool[j]);
                pool[j] = pool[n as usize - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from CPython 3.11: random.Random(seed).sample(range(n), k) and
    // random.Random(b"abc").getrandbits(32).
    #[test]
    fn matches_cpython() {
        assert_eq!(PythonRandom::from_bytes(b"abc").next_u32(), 3_315_820_543);
        let ids: Vec<u8> = (0..20).collect();
        assert_eq!(PythonRandom::from_bytes(&ids).sample_range(4, 4), vec![0, 1, 3, 2]);
        assert_eq!(PythonRandom::from_bytes(&[0xff; 20]).sample_range(8, 3), vec![3, 6, 1]);
        assert_eq!(PythonRandom::from_bytes(b"abc").sample_range(2, 2), vec![1, 0]);
        let large = PythonRandom::from_bytes(&ids).sample_range(256, 200);
        assert_eq!(&large[..8], &[36, 70, 138, 55, 121, 34, 191, 110]);
        assert_eq!(&large[196..], &[152, 210, 25, 133]);
        let set_method = PythonRandom::from_bytes(b"xyz").sample_range(64, 40);
        assert_eq!(&set_method[..6], &[34, 21, 18, 16, 15, 50]);
        assert_eq!(&set_method[37..], &[58, 47, 11]);
    }
}
