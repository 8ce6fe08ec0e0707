//! ZedTokens: opaque, versioned consistency tokens carrying the datastore id
//! and a revision, with a checksum so garbage and tampering are rejected.
//!
//! Layout (before URL-safe base64): `version(1) | checksum(8) | revision length(4, BE) |
//! revision text | datastore id`, where checksum = SHA-256(version | length | revision | id)[..8].
//! The revision text is the datastore's own (opaque here).
//!
//! A decoder of untrusted bytes: no indexing, no unchecked arithmetic, no
//! truncating casts (denied below, so a change cannot reintroduce them).
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::model::Revision;

const VERSION: u8 = 2;
/// Version, checksum and revision length.
const HEADER: usize = 13;

/// The revision's length field. Revisions stay far below 4 GiB (see
/// `Revision`), so the text is always carried whole, never cut.
fn rev_len(revision: &[u8]) -> [u8; 4] {
    u32::try_from(revision.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
}

fn checksum(revision: &[u8], datastore_id: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update([VERSION]);
    h.update(rev_len(revision));
    h.update(revision);
    h.update(datastore_id);
    let digest = h.finalize();
    let mut out = [0u8; 8];
    for (o, d) in out.iter_mut().zip(digest.iter()) {
        *o = *d;
    }
    out
}

/// Encodes a token for `revision` of the datastore `datastore_id`.
pub fn encode(revision: &Revision, datastore_id: &str) -> String {
    let rev = revision.as_str().as_bytes();
    let mut bytes = Vec::with_capacity(
        HEADER
            .saturating_add(rev.len())
            .saturating_add(datastore_id.len()),
    );
    bytes.push(VERSION);
    bytes.extend_from_slice(&checksum(rev, datastore_id.as_bytes()));
    bytes.extend_from_slice(&rev_len(rev));
    bytes.extend_from_slice(rev);
    bytes.extend_from_slice(datastore_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a token, checking that it is well-formed, untampered and from
/// the datastore `datastore_id`. The error is a message for the caller.
/// The longest ZedToken or cursor accepted (SpiceDB's cursor limit):
/// longer input is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 100 * 1024;

pub fn decode(token: &str, datastore_id: &str) -> Result<Revision, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "ZedToken of {} bytes is longer than the limit of {MAX_TOKEN_BYTES}",
            token.len()
        ));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| "malformed ZedToken: not a token issued by Kinbar".to_string())?;
    let Some((&version, rest)) = bytes.split_first() else {
        return Err("malformed ZedToken: empty".into());
    };
    if version != VERSION {
        return Err(format!("unsupported ZedToken version {version}"));
    }
    let Some((sum, rest)) = rest.split_first_chunk::<8>() else {
        return Err("malformed ZedToken: too short".into());
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return Err("malformed ZedToken: too short".into());
    };
    let len = usize::try_from(u32::from_be_bytes(*len))
        .map_err(|_| "malformed ZedToken: truncated".to_string())?;
    let Some((rev, id)) = rest.split_at_checked(len) else {
        return Err("malformed ZedToken: truncated".into());
    };
    if *sum != checksum(rev, id) {
        return Err("malformed ZedToken: checksum mismatch".into());
    }
    let rev = std::str::from_utf8(rev).map_err(|_| "malformed ZedToken".to_string())?;
    let id = std::str::from_utf8(id).map_err(|_| "malformed ZedToken".to_string())?;
    if id != datastore_id {
        return Err(format!(
            "ZedToken is from another datastore (`{id}`, this is `{datastore_id}`)"
        ));
    }
    Ok(Revision::new(rev))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)] // test code
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = encode(&Revision::new("42"), "mem-1");
        assert_eq!(decode(&t, "mem-1"), Ok(Revision::new("42")));
        assert!(
            decode(&t, "mem-2")
                .unwrap_err()
                .contains("another datastore")
        );
        assert!(decode("garbage!", "mem-1").is_err());
        assert!(decode("", "mem-1").is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[13] ^= 1; // change the revision
        assert!(
            decode(&URL_SAFE_NO_PAD.encode(bytes), "mem-1")
                .unwrap_err()
                .contains("checksum")
        );
    }
}
