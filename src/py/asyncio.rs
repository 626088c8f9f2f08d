//! How the core's futures reach asyncio: run on this process's runtime (`runtime::get`), handed to Python
//! as awaitables. At interpreter exit, `drain` lets the last hand-offs finish and stops later ones from
//! touching an interpreter that is finalizing.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::IntoPyObject;
use pyo3_async_runtimes::generic::{self, ContextExt};
use pyo3_async_runtimes::TaskLocals;
use tokio::task::JoinHandle;

use crate::runtime::get;

/// pyo3-async-runtimes' view of `get()`.
struct Bridge;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl generic::Runtime for Bridge {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        get().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        get().spawn_blocking(f)
    }
}

impl ContextExt for Bridge {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(|c| c.get().cloned()).unwrap_or_default()
    }
}

/// Futures handed to Python and not yet finished (see `drain`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set at interpreter exit: a future that finishes later never hands its result to Python.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Counts a future from its creation until it finishes or is dropped.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Run `fut` on the runtime and hand Python an awaitable. The future owns everything it touches (no
/// `&self`, no `Bound`), so dropping it on asyncio cancellation is safe.
pub fn spawn<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let guard = InFlight::new();
    generic::future_into_py::<Bridge, _, _>(py, async move {
        let result = {
            let _guard = guard;
            fut.await
        };
        if EXITING.load(Ordering::SeqCst) {
            // The interpreter is finalizing: taking the GIL now would abort the process.
            std::future::pending::<()>().await;
        }
        result
    })
}

/// At interpreter exit: wait (without the GIL) until no future handed to Python is still running, at most
/// `timeout` s; from now on one that finishes keeps its result to itself.
///
/// A tokio thread that hands a result back to asyncio takes the GIL; if the main thread is finalizing the
/// interpreter by then, the process aborts ("PyGILState_Release: thread state must be current",
/// PyO3/pyo3-async-runtimes#40). Those that finish while this waits hand off first; the rest never do.
#[pyfunction]
pub fn drain(py: Python<'_>, timeout: f64) {
    // Any float: NaN waits not at all (clamp keeps NaN, which `Duration` refuses with a panic).
    let timeout = if timeout.is_nan() { 0.0 } else { timeout.clamp(0.0, 10.0) };
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout);
    py.detach(|| {
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        EXITING.store(true, Ordering::SeqCst);
        // A hand-off that began before the flag runs just after its future finished: give it a moment.
        std::thread::sleep(Duration::from_millis(20));
    });
}
