//! The bucket hash: fixed, documented and platform-independent, so every
//! replica (and any other program) computes the same bucket for a user.
//!
//! ```text
//! bucket(route, key) = SipHash-2-4(k0 = 0, k1 = 0, route ++ 0x00 ++ key) mod 10000
//! ```
//! SipHash-2-4 is Aumasson and Bernstein's reference function (the output is
//! the little-endian u64 of the reference implementation); route names cannot
//! contain a NUL byte, so the separator makes (route, key) pairs unambiguous.
//! Golden vectors in the tests pin the result.

/// Buckets per route: one bucket is 0.01% of users, the weight's resolution.
pub const BUCKETS: u16 = 10_000;

/// The user's bucket on a route, 0..10000.
pub fn bucket(route: &str, key: &[u8]) -> u16 {
    let mut h = SipHasher24::new(0, 0);
    // Route names are at most 64 bytes and keys at most 128: one contiguous
    // message hashes in whole words instead of byte by byte across the parts.
    let mut buf = [0u8; 256];
    let len = route.len() + 1 + key.len();
    if len <= buf.len() {
        buf[..route.len()].copy_from_slice(route.as_bytes());
        buf[route.len() + 1..len].copy_from_slice(key);
        h.write(&buf[..len]);
    } else {
        h.write(route.as_bytes());
        h.write(&[0]);
        h.write(key);
    }
    (h.finish() % u64::from(BUCKETS)) as u16
}

/// SipHash-2-4 over bytes, streaming.
#[derive(Clone)]
pub struct SipHasher24 {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    length: usize,
}

impl SipHasher24 {
    pub fn new(k0: u64, k1: u64) -> Self {
        SipHasher24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        Self::round(&mut self.v);
        Self::round(&mut self.v);
        self.v[0] ^= m;
    }

    pub fn write(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len();
        if self.ntail > 0 {
            while self.ntail < 8 {
                let Some((&b, rest)) = bytes.split_first() else { return };
                self.tail |= u64::from(b) << (8 * self.ntail);
                self.ntail += 1;
                bytes = rest;
            }
            let m = self.tail;
            self.compress(m);
            self.tail = 0;
            self.ntail = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let m = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.compress(m);
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.ntail = chunks.remainder().len();
    }

    pub fn finish(&self) -> u64 {
        let mut v = self.v;
        let m = ((self.length as u64 & 0xff) << 56) | self.tail;
        v[3] ^= m;
        Self::round(&mut v);
        Self::round(&mut v);
        v[0] ^= m;
        v[2] ^= 0xff;
        for _ in 0..4 {
            Self::round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's vectors: key 00..0f, message 00..(n-1).
    #[test]
    fn siphash_matches_the_reference_vectors() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0u8..64).collect();
        let expect = [(0, 0x726f_db47_dd0e_0e31u64), (1, 0x74f8_39c5_93dc_67fd), (15, 0xa129_ca61_49be_45e5)];
        for (len, want) in expect {
            let mut h = SipHasher24::new(k0, k1);
            h.write(&msg[..len]);
            assert_eq!(h.finish(), want, "length {len}");
        }
    }

    #[test]
    fn long_inputs_take_the_streaming_path_with_the_same_result() {
        let key = vec![b'k'; 300];
        let mut h = SipHasher24::new(0, 0);
        h.write(b"web\0");
        h.write(&key);
        assert_eq!(bucket("web", &key), (h.finish() % 10_000) as u16);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std_for_split_writes() {
        use std::hash::Hasher;
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            for split in [0, 1, 3, 7, 8, 9].into_iter().filter(|&s| s <= len) {
                let mut ours = SipHasher24::new(7, 11);
                ours.write(&data[..split]);
                ours.write(&data[split..len]);
                let mut std = std::hash::SipHasher::new_with_keys(7, 11);
                std.write(&data[..len]);
                assert_eq!(ours.finish(), std.finish(), "len {len} split {split}");
            }
        }
    }

    /// Golden vectors: changing any of these reassigns users between versions
    /// on upgrade, which the product promises never to do.
    #[test]
    fn bucket_golden_vectors() {
        let cases = [
            ("web", "0000000000000000", GOLDEN[0]),
            ("web", "00000000deadbeef", GOLDEN[1]),
            ("web", "alice", GOLDEN[2]),
            ("api", "alice", GOLDEN[3]),
            ("checkout", "8f14e45fceea167a", GOLDEN[4]),
            ("web", "", GOLDEN[5]),
        ];
        for (route, key, want) in cases {
            assert_eq!(bucket(route, key.as_bytes()), want, "bucket({route:?}, {key:?})");
        }
    }

    // Cross-checked against an independent implementation of the reference
    // algorithm (the README shows the 64-bit values).
    const GOLDEN: [u16; 6] = [284, 1137, 1595, 1680, 9942, 7578];
}
