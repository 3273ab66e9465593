//! HMAC-SHA256 (RFC 2104) with the key's part hashed once. Every HMAC starts by hashing the key
//! XOR ipad and the key XOR opad, one 64-byte block each, whatever the message: a third of the
//! work of signing a small delivery. A [`KeySchedule`] keeps the SHA-256 state after each of
//! those blocks (64 bytes in all), so each signature hashes only the message and the outer
//! digest. Checked against the `hmac` crate below, at every length around the block edges.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK: usize = 64;

/// The SHA-256 states after the key's inner and outer padded blocks.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySchedule {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl KeySchedule {
    pub fn new(key: &[u8]) -> KeySchedule {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            // RFC 2104: a key longer than a block is hashed first.
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let padded = |byte: u8| {
            let mut state = IV;
            compress(&mut state, &block.map(|b| b ^ byte));
            state
        };
        KeySchedule {
            inner: padded(0x36),
            outer: padded(0x5c),
        }
    }

    /// HMAC-SHA256 of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let inner = finish(self.inner, parts);
        finish(self.outer, &[&inner])
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The SHA-256 digest of one block already absorbed into `state`, followed by `parts`.
fn finish(mut state: [u32; 8], parts: &[&[u8]]) -> [u8; 32] {
    let mut buffer = [0u8; BLOCK];
    let mut filled = 0;
    let mut length = BLOCK as u64;
    for part in parts {
        length += part.len() as u64;
        let mut data = *part;
        if filled > 0 {
            let take = (BLOCK - filled).min(data.len());
            buffer[filled..filled + take].copy_from_slice(&data[..take]);
            filled += take;
            data = &data[take..];
            if filled < BLOCK {
                continue;
            }
            // The buffer is full and hashed; the rest of the part refills it from 0 below.
            compress(&mut state, &buffer);
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            compress(&mut state, block.try_into().expect("chunks of a block"));
        }
        let rest = blocks.remainder();
        buffer[..rest.len()].copy_from_slice(rest);
        filled = rest.len();
    }
    // Padding: 0x80, zeros, then the length in bits; in a second block if it does not fit.
    buffer[filled] = 0x80;
    buffer[filled + 1..].fill(0);
    if filled + 1 > BLOCK - 8 {
        compress(&mut state, &buffer);
        buffer.fill(0);
    }
    buffer[BLOCK - 8..].copy_from_slice(&(length * 8).to_be_bytes());
    compress(&mut state, &buffer);
    let mut digest = [0u8; 32];
    for (out, word) in digest.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    fn reference(key: &[u8], message: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn macs_equal_the_hmac_crates_at_every_length_around_the_block_edges() {
        let message: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for key_len in [1, 24, 32, 63, 64, 65, 100] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 13 + 1) as u8).collect();
            let schedule = KeySchedule::new(&key);
            for len in 0..message.len() {
                let whole = &message[..len];
                let (a, b) = whole.split_at(len / 3);
                let (b, c) = b.split_at(b.len() / 2);
                assert_eq!(
                    schedule.mac(&[whole]),
                    reference(&key, whole),
                    "{key_len} {len}"
                );
                assert_eq!(
                    schedule.mac(&[a, b, c]),
                    reference(&key, whole),
                    "{key_len} {len}"
                );
            }
        }
    }

    #[test]
    fn rfc_4231_test_case_2_reproduces_exactly() {
        let mac = KeySchedule::new(b"Jefe").mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
