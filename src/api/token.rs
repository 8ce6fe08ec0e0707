//! ZedTokens: opaque, versioned consistency tokens carrying the datastore id
//! and a revision, with a checksum so garbage and tampering are rejected.
//!
//! Layout (before URL-safe base64): `version(1) | revision(8, BE) | checksum(8) | datastore id`,
//! where checksum = SHA-256(version | revision | id)[..8].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::model::Revision;

const VERSION: u8 = 1;

fn checksum(revision: Revision, datastore_id: &str) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update([VERSION]);
    h.update(revision.0.to_be_bytes());
    h.update(datastore_id.as_bytes());
    let digest = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Encodes a token for `revision` of the datastore `datastore_id`.
pub fn encode(revision: Revision, datastore_id: &str) -> String {
    let mut bytes = Vec::with_capacity(17 + datastore_id.len());
    bytes.push(VERSION);
    bytes.extend_from_slice(&revision.0.to_be_bytes());
    bytes.extend_from_slice(&checksum(revision, datastore_id));
    bytes.extend_from_slice(datastore_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a token, checking that it is well-formed, untampered and from
/// the datastore `datastore_id`. The error is a message for the caller.
pub fn decode(token: &str, datastore_id: &str) -> Result<Revision, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| "malformed ZedToken: not a token issued by Kinbar".to_string())?;
    if bytes.len() < 17 {
        return Err("malformed ZedToken: too short".into());
    }
    if bytes[0] != VERSION {
        return Err(format!("unsupported ZedToken version {}", bytes[0]));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&bytes[1..9]);
    let revision = Revision(u64::from_be_bytes(rev));
    let id = std::str::from_utf8(&bytes[17..]).map_err(|_| "malformed ZedToken".to_string())?;
    if bytes[9..17] != checksum(revision, id) {
        return Err("malformed ZedToken: checksum mismatch".into());
    }
    if id != datastore_id {
        return Err(format!(
            "ZedToken is from another datastore (`{id}`, this is `{datastore_id}`)"
        ));
    }
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = encode(Revision(42), "mem-1");
        assert_eq!(decode(&t, "mem-1"), Ok(Revision(42)));
        assert!(
            decode(&t, "mem-2")
                .unwrap_err()
                .contains("another datastore")
        );
        assert!(decode("garbage!", "mem-1").is_err());
        assert!(decode("", "mem-1").is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[8] ^= 1; // change the revision
        assert!(
            decode(&URL_SAFE_NO_PAD.encode(bytes), "mem-1")
                .unwrap_err()
                .contains("checksum")
        );
    }
}
