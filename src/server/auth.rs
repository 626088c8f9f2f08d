//! Who may call the server: API keys (sent as `authorization: Bearer <key>`) with scopes, or a settle
//! capability for one execution (callback URLs, checked by `Core`). A key is compared in constant time
//! and never logged: its name is.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::errors::{Error, Result};

/// What a key allows. `Admin` allows everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Store new executions (a caller's defer).
    Create,
    /// Report progress, settle, heartbeat.
    Settle,
    /// Get, list, subscribe, metrics.
    Read,
    /// Everything, and minting callback URLs.
    Admin,
}

impl Scope {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "create" => Ok(Self::Create),
            "settle" => Ok(Self::Settle),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            _ => Err(Error::InvalidArgument(format!("scopes are create, settle, read and admin, not {name:?}"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Settle => "settle",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

/// One API key: a name for logs, the secret, and its scopes. No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub secret: String,
    pub scopes: Vec<Scope>,
}

/// The shortest key accepted: guessing one must be out of reach.
const MIN_SECRET_LEN: usize = 16;

/// Why a request was refused; nothing was done.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or ones no key matches.
    Unauthenticated(String),
    /// A known key without the scope the call needs.
    PermissionDenied(String),
}

/// A key as kept: (name, SHA-256 of the secret, scopes). Comparing digests keeps the comparison's time
/// independent of the secret's length.
type KeptKey = (String, [u8; 32], Vec<Scope>);

/// The keys a server accepts (`None`: everyone is admin, for `--insecure-localhost`).
pub struct Keys {
    keys: Option<Vec<KeptKey>>,
}

impl Keys {
    /// Check every key, and that names and secrets are unique.
    pub fn new(keys: Option<Vec<ApiKey>>) -> Result<Self> {
        let Some(keys) = keys else { return Ok(Self { keys: None }) };
        let mut seen = std::collections::HashSet::new();
        let mut digests = Vec::new();
        for key in keys {
            crate::core::non_empty(&key.name, "an API key's name")?;
            if key.secret.len() < MIN_SECRET_LEN || key.secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidArgument(format!(
                    "API key {:?}: a secret must be at least {MIN_SECRET_LEN} characters without spaces",
                    key.name
                )));
            }
            if key.scopes.is_empty() {
                return Err(Error::InvalidArgument(format!("API key {:?} has no scope", key.name)));
            }
            let digest: [u8; 32] = Sha256::digest(key.secret.as_bytes()).into();
            if !seen.insert(key.name.clone()) || digests.iter().any(|(_, d, _)| d == &digest) {
                return Err(Error::InvalidArgument(format!("API key {:?} is given twice", key.name)));
            }
            digests.push((key.name, digest, key.scopes));
        }
        if digests.is_empty() {
            return Err(Error::InvalidArgument(
                "no API key given (serving without keys needs insecure_localhost)".into(),
            ));
        }
        Ok(Self { keys: Some(digests) })
    }

    pub fn open(&self) -> bool {
        self.keys.is_none()
    }

    /// The name of the key `authorization` (the header's value) presents, if it allows `scope`.
    pub fn check(&self, authorization: Option<&str>, scope: Scope) -> Result<String, Refusal> {
        if self.keys.is_none() {
            return Ok(OPEN_NAME.into());
        }
        let presented = authorization
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Refusal::Unauthenticated("send an API key as `authorization: Bearer <key>`".into()))?;
        let (name, scopes, _) =
            self.find(presented).ok_or_else(|| Refusal::Unauthenticated("the API key is not valid".into()))?;
        allows(&name, &scopes, scope).map(|()| name)
    }

    /// The key whose secret is `presented`: its name, its scopes and a tag that changes with its secret
    /// (a console session names its key by both, so replacing a secret ends the sessions it opened).
    pub fn find(&self, presented: &str) -> Option<(String, Vec<Scope>, String)> {
        let Some(keys) = &self.keys else { return Some((OPEN_NAME.into(), vec![Scope::Admin], OPEN_NAME.into())) };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, so the time taken does not say which one matched.
        let mut found = None;
        for (name, key, scopes) in keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some((name.clone(), scopes.clone(), tag(key)));
            }
        }
        found
    }

    /// The scopes of key `name`, if its secret still has `secret_tag` (`find`).
    pub fn scopes_of(&self, name: &str, secret_tag: &str) -> Option<Vec<Scope>> {
        let Some(keys) = &self.keys else { return (name == OPEN_NAME).then(|| vec![Scope::Admin]) };
        keys.iter()
            .find(|(kept, key, _)| kept == name && bool::from(tag(key).as_bytes().ct_eq(secret_tag.as_bytes())))
            .map(|(_, _, scopes)| scopes.clone())
    }
}

/// Who everyone is when the server runs without keys (`--insecure-localhost`).
const OPEN_NAME: &str = "insecure-localhost";

/// A short digest of a key's digest: names its secret without revealing anything about it.
fn tag(digest: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest([b"stigmer-session-tag:".as_slice(), digest].concat())[..8])
}

/// Whether key `name` with `scopes` allows `scope` (admin allows all).
pub fn allows(name: &str, scopes: &[Scope], scope: Scope) -> Result<(), Refusal> {
    if scopes.iter().any(|s| *s == scope || *s == Scope::Admin) {
        Ok(())
    } else {
        Err(Refusal::PermissionDenied(format!("API key {name:?} lacks the {:?} scope", scope.as_str())))
    }
}

/// API keys from text: one per line, `<name> <scope>[,<scope>...] <secret>`; blank lines and `#` comments
/// are skipped. (The format of `--api-keys-file` and `STIGMER_HANDSHAKE_API_KEYS`.)
pub fn parse_keys(text: &str) -> Result<Vec<ApiKey>> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, secret] = fields[..] else {
            return Err(Error::InvalidArgument(format!(
                "API keys line {}: expected `<name> <scope>[,<scope>...] <secret>`, got {} fields",
                number + 1,
                fields.len()
            )));
        };
        let scopes = scopes.split(',').map(Scope::parse).collect::<Result<Vec<_>>>()?;
        keys.push(ApiKey { name: name.to_owned(), secret: secret.to_owned(), scopes });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(Some(
            parse_keys("# comment\nrunner settle,read runner-secret-0123456789\nops admin ops-secret-0123456789\n")
                .unwrap(),
        ))
        .unwrap()
    }

    #[test]
    fn a_key_allows_its_scopes_and_admin_allows_all() {
        let keys = keys();
        assert_eq!(keys.check(Some("Bearer runner-secret-0123456789"), Scope::Settle), Ok("runner".into()));
        assert_eq!(keys.check(Some("Bearer runner-secret-0123456789"), Scope::Read), Ok("runner".into()));
        assert!(matches!(
            keys.check(Some("Bearer runner-secret-0123456789"), Scope::Create),
            Err(Refusal::PermissionDenied(_))
        ));
        assert!(matches!(
            keys.check(Some("Bearer runner-secret-0123456789"), Scope::Admin),
            Err(Refusal::PermissionDenied(_))
        ));
        assert_eq!(keys.check(Some("Bearer ops-secret-0123456789"), Scope::Create), Ok("ops".into()));
    }

    #[test]
    fn missing_wrong_or_malformed_credentials_are_unauthenticated() {
        let keys = keys();
        for header in [None, Some(""), Some("runner-secret-0123456789"), Some("Bearer nope"), Some("Basic abc")] {
            assert!(matches!(keys.check(header, Scope::Read), Err(Refusal::Unauthenticated(_))), "{header:?}");
        }
        let Err(Refusal::Unauthenticated(message)) = keys.check(Some("Bearer runner-secret-0123456780"), Scope::Read)
        else {
            panic!("refused")
        };
        assert!(!message.contains("secret"), "the refusal never echoes a key: {message}");
    }

    #[test]
    fn bad_key_lists_are_refused_with_the_reason() {
        for text in ["a read short", "a read,write secret-0123456789abc", "a secret-0123456789abc", "a  "] {
            let parsed = parse_keys(text).and_then(|k| Keys::new(Some(k)));
            assert!(matches!(parsed, Err(Error::InvalidArgument(_))), "{text}");
        }
        let twice = parse_keys("a read secret-0123456789abc\nb read secret-0123456789abc").unwrap();
        assert!(Keys::new(Some(twice)).is_err(), "one secret, two names");
        assert!(Keys::new(Some(Vec::new())).is_err(), "an empty list is not 'no auth'");
        assert!(Keys::new(None).unwrap().open());
    }
}
