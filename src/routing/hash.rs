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
    // Route names are at most 64 bytes and keys at most 128: the message
    // fits a stack buffer and hashes in one pass, a word at a time.
    let mut buf = [0u8; 256];
    let len = route.len() + 1 + key.len();
    let hash = if len <= buf.len() {
        buf[..route.len()].copy_from_slice(route.as_bytes());
        buf[route.len() + 1..len].copy_from_slice(key);
        siphash24(0, 0, &buf[..len])
    } else {
        siphash24(0, 0, &[route.as_bytes(), &[0], key].concat())
    };
    (hash % u64::from(BUCKETS)) as u16
}

/// SipHash-2-4 of `message` with the key (k0, k1).
pub fn siphash24(k0: u64, k1: u64, message: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = message.chunks_exact(8);
    for word in &mut words {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        compress(&mut v, u64::from_le_bytes(le));
    }
    // The last word: the remaining bytes, and the length's low byte on top.
    let mut last = (message.len() as u64 & 0xff) << 56;
    for (i, &b) in words.remainder().iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    compress(&mut v, last);
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    round(v);
    v[0] ^= m;
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
            assert_eq!(siphash24(k0, k1, &msg[..len]), want, "length {len}");
        }
    }

    #[test]
    fn long_inputs_beyond_the_stack_buffer_hash_the_same_message() {
        let key = vec![b'k'; 300];
        let message = [&b"web\0"[..], &key].concat();
        assert_eq!(bucket("web", &key), (siphash24(0, 0, &message) % 10_000) as u16);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std_for_every_length() {
        use std::hash::Hasher;
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let mut std = std::hash::SipHasher::new_with_keys(7, 11);
            std.write(&data[..len]);
            assert_eq!(siphash24(7, 11, &data[..len]), std.finish(), "len {len}");
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
