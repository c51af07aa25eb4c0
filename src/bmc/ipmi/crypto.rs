//! The RMCP+ cipher suites girder speaks, and the keys of a session (IPMI 2.0
//! §13.28-13.32): RAKP-HMAC-SHA1 or -SHA256 authentication, HMAC-SHA1-96 or
//! HMAC-SHA256-128 integrity, AES-CBC-128 confidentiality.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// A cipher suite: which algorithms the session uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// Suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128. Offered by nearly
    /// every BMC, and by `ipmi_sim`.
    Suite3,
    /// Suite 17: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Suite17,
}

impl CipherSuite {
    pub fn id(self) -> u8 {
        match self {
            CipherSuite::Suite3 => 3,
            CipherSuite::Suite17 => 17,
        }
    }

    /// Authentication, integrity and confidentiality algorithm numbers, as
    /// the Open Session Request proposes them.
    pub(super) fn algorithms(self) -> (u8, u8, u8) {
        match self {
            CipherSuite::Suite3 => (0x01, 0x01, 0x01),
            CipherSuite::Suite17 => (0x03, 0x04, 0x01),
        }
    }

    /// Length of the RAKP 2/3 key exchange authentication codes, and of the SIK.
    pub(super) fn auth_code_len(self) -> usize {
        match self {
            CipherSuite::Suite3 => 20,
            CipherSuite::Suite17 => 32,
        }
    }

    /// Length of the RAKP 4 integrity check value and of every message's
    /// AuthCode (HMAC-SHA1-96: 12; HMAC-SHA256-128: 16).
    pub(super) fn integrity_len(self) -> usize {
        match self {
            CipherSuite::Suite3 => 12,
            CipherSuite::Suite17 => 16,
        }
    }

    /// The RAKP authentication algorithm's HMAC, keyed with `key`, over the
    /// concatenation of `parts`.
    pub(super) fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            CipherSuite::Suite3 => hmac_of::<Hmac<Sha1>>(key, parts),
            CipherSuite::Suite17 => hmac_of::<Hmac<Sha256>>(key, parts),
        }
    }
}

fn hmac_of<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length: new_from_slice cannot fail for it.
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The keys of an established session. Not `Debug`: nothing here may be printed.
pub(super) struct SessionKeys {
    pub suite: CipherSuite,
    /// K1: the integrity key.
    k1: Vec<u8>,
    /// The first 16 bytes of K2: the AES-128 key.
    aes: aes::Aes128,
}

impl SessionKeys {
    /// K1 and K2 from the session integrity key (§13.32: HMAC of 20 bytes of
    /// 0x01, resp. 0x02, keyed with the SIK).
    pub fn derive(suite: CipherSuite, sik: &[u8]) -> Self {
        let k1 = suite.hmac(sik, &[&[0x01; 20]]);
        let k2 = suite.hmac(sik, &[&[0x02; 20]]);
        let mut key = [0u8; 16];
        key.copy_from_slice(&k2[..16]);
        Self { suite, k1, aes: aes::Aes128::new(&Array::from(key)) }
    }

    /// A message's AuthCode: the integrity algorithm over `data`, truncated.
    pub fn integrity(&self, data: &[u8]) -> Vec<u8> {
        let mut code = self.suite.hmac(&self.k1, &[data]);
        code.truncate(self.suite.integrity_len());
        code
    }

    /// AES-CBC-128 with the given IV. The payload is padded as §13.29 says:
    /// pad bytes 1, 2, 3... then the pad length, to a multiple of 16.
    pub fn encrypt(&self, iv: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut data = payload.to_vec();
        let pad = (16 - (payload.len() + 1) % 16) % 16;
        data.extend((1..=pad).map(|b| b as u8));
        data.push(pad as u8);
        let mut out = Vec::with_capacity(16 + data.len());
        out.extend_from_slice(&iv);
        let mut prev = iv;
        for chunk in data.chunks_exact(16) {
            let mut block = [0u8; 16];
            for (i, b) in block.iter_mut().enumerate() {
                *b = chunk[i] ^ prev[i];
            }
            let mut block = Array::from(block);
            self.aes.encrypt_block(&mut block);
            prev.copy_from_slice(&block);
            out.extend_from_slice(&block);
        }
        out
    }

    /// The inverse of [`SessionKeys::encrypt`]: IV, then blocks; checks and
    /// strips the confidentiality trailer.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        if data.len() < 32 || !data.len().is_multiple_of(16) {
            return Err(format!("encrypted payload of {} bytes (want an IV and whole AES blocks)", data.len()));
        }
        let (iv, blocks) = data.split_at(16);
        let mut prev = [0u8; 16];
        prev.copy_from_slice(iv);
        let mut out = Vec::with_capacity(blocks.len());
        for chunk in blocks.chunks_exact(16) {
            let mut cipher = [0u8; 16];
            cipher.copy_from_slice(chunk);
            let mut block = Array::from(cipher);
            self.aes.decrypt_block(&mut block);
            out.extend(block.iter().zip(prev.iter()).map(|(b, p)| b ^ p));
            prev = cipher;
        }
        let Some(&pad) = out.last() else {
            return Err("empty encrypted payload".into());
        };
        let pad = usize::from(pad);
        if pad > 15 || pad + 1 > out.len() {
            return Err(format!("confidentiality pad length {pad} is invalid"));
        }
        out.truncate(out.len() - 1 - pad);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // RFC 2202 test case 2.
        let mac = CipherSuite::Suite3.hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        let mac = CipherSuite::Suite17.hmac(b"Jefe", &[b"what do ya want for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        // RFC 4231 test case 2.
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn aes_cbc_round_trips_with_the_ipmi_trailer() {
        let keys = SessionKeys::derive(CipherSuite::Suite3, &[7u8; 20]);
        for len in [0, 1, 14, 15, 16, 17, 31, 32, 100] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = keys.encrypt([9u8; 16], &payload);
            assert_eq!(sealed.len() % 16, 0);
            assert_eq!(&sealed[..16], &[9u8; 16]);
            // The trailer: 1, 2, ... N, N.
            assert_eq!(keys.decrypt(&sealed).unwrap(), payload, "len {len}");
        }
        // FIPS-197 appendix C.1 through the same code path: one block, zero IV.
        let aes = aes::Aes128::new(&Array::from([
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
        ]));
        let mut block = Array::from([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
        ]);
        aes.encrypt_block(&mut block);
        let hex: String = block.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "69c4e0d86a7b0430d8cdb78070b4c55a");
    }

    #[test]
    fn decrypt_refuses_malformed_input() {
        let keys = SessionKeys::derive(CipherSuite::Suite3, &[1u8; 20]);
        assert!(keys.decrypt(&[]).is_err());
        assert!(keys.decrypt(&[0u8; 16]).is_err());
        assert!(keys.decrypt(&[0u8; 33]).is_err());
        // Random blocks decrypt to a bad pad length more often than not; either
        // way, no panic.
        for seed in 0..64u8 {
            let _ = keys.decrypt(&[seed; 48]);
        }
    }
}
