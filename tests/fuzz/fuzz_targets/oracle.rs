//! The HMAC-SHA256 oracle the webhook targets check gitreload against:
//! written from RFC 2104 on top of `sha2` alone, so that it shares no code
//! with the `hmac` crate gitreload uses.

use sha2::{Digest, Sha256};

/// HMAC-SHA256 as RFC 2104 defines it.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}
