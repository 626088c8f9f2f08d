//! Any bytes handed in as a task token: decoding either succeeds or is a typed `TokenError`, and what a
//! decoded token shows (Display, Debug, fingerprint) never holds the token (its ids, yes: they are not secret).
#![no_main]

use _core::errors::Error;
use _core::token::TaskToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match TaskToken::parse(data) {
        Ok(token) => {
            let shown = format!("{token} {token:?} {}", token.fingerprint());
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            assert!(data.len() < 16 || !shown.as_bytes().windows(data.len()).any(|w| w == data));
            assert!(!shown.contains(&hex));
            assert_eq!(token.secret_bytes(), data);
        }
        Err(Error::Token(_)) => {}
        Err(other) => panic!("a bad token must be a TokenError, not {other:?}"),
    }
});
