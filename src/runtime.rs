//! The process's tokio runtime.
//!
//! One multi-threaded runtime per process. A runtime's worker threads do not survive `fork`, so a child
//! process that connects again gets a runtime of its own (the parent's stays allocated, unused: freeing it
//! would join threads the child does not have).

use std::sync::atomic::{AtomicPtr, Ordering};

use tokio::runtime::Runtime;

/// The runtime and the process it was built in.
struct Owned {
    pid: u32,
    runtime: Runtime,
}

static CURRENT: AtomicPtr<Owned> = AtomicPtr::new(std::ptr::null_mut());

/// This process's runtime, built on first use (and again in a forked child).
pub fn get() -> &'static Runtime {
    let pid = std::process::id();
    let current = CURRENT.load(Ordering::Acquire);
    // SAFETY: a published `Owned` is never freed (see the module doc), so the pointer stays valid.
    if let Some(owned) = unsafe { current.as_ref() } {
        if owned.pid == pid {
            return &owned.runtime;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("build the tokio runtime");
    let fresh = Box::into_raw(Box::new(Owned { pid, runtime }));
    match CURRENT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: as above; `fresh` is now published and never freed.
        Ok(_) => unsafe { &(*fresh).runtime },
        Err(_) => {
            // Another thread of this process published one first: use it. Ours is leaked, not dropped
            // (dropping a runtime may block, which is refused inside another runtime's threads).
            get()
        }
    }
}
