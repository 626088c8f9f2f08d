//! Crash injection for the chaos tests: `STIGMER_HANDSHAKE_FAILPOINTS="after_settle_commit=0.05"` makes the
//! process abort (no clean-up, like SIGKILL) at that point with that probability. Unset, it costs one
//! lookup in an empty list.

use std::sync::OnceLock;

fn points() -> &'static [(String, f64)] {
    static POINTS: OnceLock<Vec<(String, f64)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("STIGMER_HANDSHAKE_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|item| {
                let (name, probability) = item.split_once('=')?;
                Some((name.trim().to_owned(), probability.trim().parse().ok()?))
            })
            .collect()
    })
}

/// A number in [0, 1) from the OS's randomness (uuid v4 draws on it).
pub fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() & ((1 << 53) - 1); // 53 random bits, clear of version/variant
    #[allow(clippy::cast_precision_loss)]
    let value = bits as f64 / (1u64 << 53) as f64;
    value
}

/// Abort the process here, with the configured probability.
pub fn hit(name: &str) {
    for (point, probability) in points() {
        if point == name && random_unit() < *probability {
            eprintln!("stigmer-handshake: failpoint {name} fired, aborting");
            std::process::abort();
        }
    }
}
