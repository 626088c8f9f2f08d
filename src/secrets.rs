//! Keeping the task token secret at rest, and settling without it: the token keyring (AES-256-GCM) and
//! scoped settle capabilities (HMAC-SHA256).
//!
//! Whoever holds a task token can settle the parent activity. With a keyring, the store keeps only
//! `nonce || ciphertext` and the id of the key that sealed it (so keys can rotate: the first key seals,
//! every key opens); the execution id is the associated data, so a sealed token cannot be moved to
//! another row. A capability lets code that must not see the store or the token (an untrusted agent)
//! settle exactly one execution, with the outcomes it was granted, until it expires.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::Aes256Gcm;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::errors::{Error, Result};

const NONCE_LEN: usize = 12;

/// The keys tokens are sealed with at rest. Empty: tokens are stored as they are.
#[derive(Default)]
pub struct Keyring {
    current: Option<String>,
    keys: HashMap<String, Aes256Gcm>,
}

impl Keyring {
    /// `keys` in order of preference: the first seals new tokens, all of them open stored ones.
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<Self> {
        let mut ring = Keyring::default();
        for (id, key) in keys {
            if id.is_empty() || id.len() > 64 {
                return Err(Error::InvalidArgument("a token key id must be 1 to 64 characters".into()));
            }
            let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| {
                Error::InvalidArgument(format!("token key {id:?} must be 32 bytes (AES-256), not {}", key.len()))
            })?;
            if ring.keys.insert(id.clone(), cipher).is_some() {
                return Err(Error::InvalidArgument(format!("token key id {id:?} is given twice")));
            }
            ring.current.get_or_insert(id);
        }
        Ok(ring)
    }

    /// What to store for `token` of execution `id`: (bytes, key id), or the token itself without a key.
    pub fn seal(&self, id: &str, token: &[u8]) -> Result<(Vec<u8>, Option<String>)> {
        let Some(key_id) = &self.current else { return Ok((token.to_vec(), None)) };
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self.keys[key_id]
            .encrypt(&nonce, Payload { msg: token, aad: id.as_bytes() })
            .map_err(|_| Error::TokenKey(format!("could not seal the token of {id:?}")))?;
        Ok(([nonce.as_slice(), &sealed].concat(), Some(key_id.clone())))
    }

    /// The token back from what the store holds for execution `id`.
    pub fn open(&self, id: &str, stored: &[u8], key_id: Option<&str>) -> Result<Vec<u8>> {
        let Some(key_id) = key_id else { return Ok(stored.to_vec()) };
        let cipher = self.keys.get(key_id).ok_or_else(|| {
            Error::TokenKey(format!(
                "the token of {id:?} is sealed with key {key_id:?}, which this process does not have"
            ))
        })?;
        if stored.len() < NONCE_LEN {
            return Err(Error::TokenKey(format!("the sealed token of {id:?} is truncated")));
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        cipher
            .decrypt(nonce.into(), Payload { msg: sealed, aad: id.as_bytes() })
            .map_err(|_| Error::TokenKey(format!("key {key_id:?} does not open the token of {id:?} (wrong key?)")))
    }
}

/// What a capability allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub execution_id: String,
    /// Among "complete", "fail", "cancel".
    pub outcomes: Vec<String>,
    pub expires_ms: i64,
}

const CAPABILITY_PREFIX: &str = "shc1";

/// The keys capabilities are signed with, and the store they are granted for: the first key signs, every
/// key verifies (so keys rotate as token keys do), and a capability of another store is refused even
/// where the stores share a key.
pub struct Capabilities {
    store_id: String,
    keys: Vec<Vec<u8>>,
}

impl Capabilities {
    /// `keys` in order of preference, each 16 to 1024 bytes; never empty.
    pub fn new(store_id: &str, keys: Vec<Vec<u8>>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::InvalidArgument("capabilities need at least one key".into()));
        }
        Self::check_keys(&keys)?;
        Ok(Self { store_id: store_id.to_owned(), keys })
    }

    /// Refuse keys too short to sign with (or absurdly long), before anything is opened with them.
    pub fn check_keys(keys: &[Vec<u8>]) -> Result<()> {
        if keys.iter().any(|k| !(16..=1024).contains(&k.len())) {
            return Err(Error::InvalidArgument("a capability key must be 16 to 1024 bytes".into()));
        }
        Ok(())
    }

    /// Sign a grant: `shc1.<hex JSON>.<hex HMAC-SHA256>`.
    pub fn grant(&self, grant: &Grant) -> Result<String> {
        for outcome in &grant.outcomes {
            if !matches!(outcome.as_str(), "complete" | "fail" | "cancel") {
                return Err(Error::InvalidArgument(format!(
                    "a capability grants \"complete\", \"fail\" or \"cancel\", not {outcome:?}"
                )));
            }
        }
        if grant.outcomes.is_empty() {
            return Err(Error::InvalidArgument("a capability must grant at least one outcome".into()));
        }
        let body = serde_json::json!({
            "s": self.store_id, "e": grant.execution_id, "o": grant.outcomes, "x": grant.expires_ms,
        })
        .to_string();
        let body = hex::encode(body);
        let signature = hex::encode(mac(&self.keys[0], &body).finalize().into_bytes());
        Ok(format!("{CAPABILITY_PREFIX}.{body}.{signature}"))
    }

    /// Check a capability for settling `execution_id` with `outcome` at `now_ms`.
    pub fn verify(&self, capability: &str, execution_id: &str, outcome: &str, now_ms: i64) -> Result<Grant> {
        let grant = self.open(capability, now_ms)?;
        if grant.execution_id != execution_id {
            return Err(Error::Capability(format!(
                "the capability is for execution {:?}, not {execution_id:?}",
                grant.execution_id
            )));
        }
        if !grant.outcomes.iter().any(|o| o == outcome) {
            return Err(Error::Capability(format!(
                "the capability does not allow {outcome:?} (it allows {:?})",
                grant.outcomes
            )));
        }
        Ok(grant)
    }

    /// What a capability grants, once its signature, its store and its expiry at `now_ms` are checked.
    pub fn open(&self, capability: &str, now_ms: i64) -> Result<Grant> {
        let refuse = |why: &str| Error::Capability(why.to_owned());
        let mut parts = capability.split('.');
        let (Some(CAPABILITY_PREFIX), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse("malformed capability"));
        };
        // One spelling per capability: `grant` writes lower-case hex, so nothing else is one.
        if !signature.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(refuse("malformed capability"));
        }
        let signature = hex::decode(signature).map_err(|_| refuse("malformed capability"))?;
        if !self.keys.iter().any(|key| mac(key, body).verify_slice(&signature).is_ok()) {
            return Err(refuse("capability signature does not match"));
        }
        let body = hex::decode(body).map_err(|_| refuse("malformed capability"))?;
        let fields: serde_json::Value = serde_json::from_slice(&body).map_err(|_| refuse("malformed capability"))?;
        if fields["s"].as_str() != Some(self.store_id.as_str()) {
            return Err(refuse("the capability was granted for another store"));
        }
        let grant = Grant {
            execution_id: fields["e"].as_str().unwrap_or_default().to_owned(),
            outcomes: fields["o"]
                .as_array()
                .map(|o| o.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            expires_ms: fields["x"].as_i64().unwrap_or_default(),
        };
        if now_ms >= grant.expires_ms {
            return Err(refuse("the capability has expired"));
        }
        Ok(grant)
    }
}

impl Capabilities {
    /// Sign `body` for `purpose` (console sessions) with the signing key: hex HMAC-SHA256 of
    /// `<purpose>\n<body>`, which never equals a capability's (whose signed body is hex, without a newline).
    pub fn sign(&self, purpose: &str, body: &str) -> String {
        hex::encode(mac(&self.keys[0], &format!("{purpose}\n{body}")).finalize().into_bytes())
    }

    /// Whether `signature` is `sign(purpose, body)` under any of the keys (they rotate).
    pub fn signed(&self, purpose: &str, body: &str, signature: &str) -> bool {
        let Ok(signature) = hex::decode(signature) else { return false };
        self.keys.iter().any(|key| mac(key, &format!("{purpose}\n{body}")).verify_slice(&signature).is_ok())
    }
}

/// HMAC-SHA256 over `body`; `Capabilities::new` checked the key's length.
fn mac(key: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_key_and_row() {
        let ring = Keyring::new(vec![("k2".into(), vec![7; 32]), ("k1".into(), vec![1; 32])]).unwrap();
        let (sealed, key_id) = ring.seal("e1", b"secret token").unwrap();
        assert_eq!(key_id.as_deref(), Some("k2"));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(ring.open("e1", &sealed, key_id.as_deref()).unwrap(), b"secret token");
        assert!(matches!(ring.open("e2", &sealed, Some("k2")), Err(Error::TokenKey(_))), "bound to its row");
        assert!(matches!(ring.open("e1", &sealed, Some("k1")), Err(Error::TokenKey(_))), "wrong key");
        assert!(matches!(ring.open("e1", &sealed, Some("k9")), Err(Error::TokenKey(_))), "unknown key");
        assert!(matches!(ring.open("e1", &sealed[..5], Some("k2")), Err(Error::TokenKey(_))));
        assert_eq!(Keyring::default().open("e1", b"plain", None).unwrap(), b"plain");
        assert!(Keyring::new(vec![("k".into(), vec![0; 16])]).is_err(), "AES-256 only");
    }

    #[test]
    fn capabilities_allow_one_execution_of_one_store_its_outcomes_until_expiry() {
        let caps = Capabilities::new("store-a", vec![vec![9u8; 32]]).unwrap();
        let g = Grant { execution_id: "e1".into(), outcomes: vec!["complete".into()], expires_ms: 2_000 };
        let cap = caps.grant(&g).unwrap();
        assert_eq!(caps.verify(&cap, "e1", "complete", 1_000).unwrap(), g);
        for (cap, id, outcome, now) in [
            (cap.as_str(), "e2", "complete", 1_000),
            (cap.as_str(), "e1", "fail", 1_000),
            (cap.as_str(), "e1", "complete", 2_000),
            ("shc1.00.00", "e1", "complete", 1_000),
            ("garbage", "e1", "complete", 1_000),
        ] {
            assert!(matches!(caps.verify(cap, id, outcome, now), Err(Error::Capability(_))), "{cap} {id} {outcome}");
        }
        let other_key = Capabilities::new("store-a", vec![vec![8u8; 32]]).unwrap();
        assert!(matches!(other_key.verify(&cap, "e1", "complete", 1_000), Err(Error::Capability(_))));
        let other_store = Capabilities::new("store-b", vec![vec![9u8; 32]]).unwrap();
        assert!(matches!(other_store.verify(&cap, "e1", "complete", 1_000), Err(Error::Capability(_))), "same key");
        let mut forged = cap.clone();
        forged.replace_range(5..7, "00");
        assert!(matches!(caps.verify(&forged, "e1", "complete", 1_000), Err(Error::Capability(_))));
    }

    #[test]
    fn capability_keys_rotate_the_first_signs_all_verify() {
        let g = Grant { execution_id: "e1".into(), outcomes: vec!["fail".into()], expires_ms: 2_000 };
        let old = Capabilities::new("s", vec![vec![1u8; 32]]).unwrap().grant(&g).unwrap();
        let rotated = Capabilities::new("s", vec![vec![2u8; 32], vec![1u8; 32]]).unwrap();
        assert!(rotated.verify(&old, "e1", "fail", 1_000).is_ok(), "the old key still verifies");
        let new = rotated.grant(&g).unwrap();
        assert!(Capabilities::new("s", vec![vec![2u8; 32]]).unwrap().verify(&new, "e1", "fail", 1_000).is_ok());
        assert!(Capabilities::new("s", vec![vec![1u8; 32]]).unwrap().verify(&new, "e1", "fail", 1_000).is_err());
        assert!(Capabilities::new("s", vec![]).is_err() && Capabilities::new("s", vec![vec![0; 15]]).is_err());
    }
}
