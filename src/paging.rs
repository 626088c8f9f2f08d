//! Page tokens of listings: where a page ended (created time and id), so the next page starts after it
//! whatever was created or deleted meanwhile. Opaque to callers; the same on every face.

use crate::errors::{Error, Result};
use crate::store::ExecutionRecord;

/// The token of the page after the one that ended with `last`.
pub fn page_token(last: &ExecutionRecord) -> String {
    format!("{}.{}", last.created_ms, hex::encode(last.id.as_bytes()))
}

/// Read a page token back: where the page starts after; empty: the first page.
pub fn parse_page_token(token: &str) -> Result<Option<(i64, String)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::InvalidArgument("page_token is not one this server returned".into());
    let (created, id) = token.split_once('.').ok_or_else(bad)?;
    let created: i64 = created.parse().map_err(|_| bad())?;
    let id = String::from_utf8(hex::decode(id).map_err(|_| bad())?).map_err(|_| bad())?;
    Ok(Some((created, id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Labels;
    use crate::vocabulary::{Kind, Phase};

    #[test]
    fn page_tokens_read_back_and_others_are_refused() {
        let record = ExecutionRecord {
            id: "agent-é.1".into(),
            kind: Kind::Agent,
            phase: Phase::Pending,
            spec: Vec::new(),
            status: Vec::new(),
            created_ms: 1_700_000_000_123,
            updated_ms: 0,
            retry_of: None,
            labels: Labels::new(),
            ended: None,
            callback: None,
        };
        assert_eq!(parse_page_token(&page_token(&record)).unwrap(), Some((1_700_000_000_123, "agent-é.1".into())));
        assert_eq!(parse_page_token("").unwrap(), None);
        for bad in ["x", "1.zz", "a.00", "1.ff"] {
            assert!(matches!(parse_page_token(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }
}
