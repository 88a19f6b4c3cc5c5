//! The end of a streamed answer. A plain answer is done when its head is ready, and the
//! middleware that count, bound and log requests act then; a streamed one (a server stream, a
//! client stream still being read, a WebSocket) is done only when its last byte went out or the
//! client left. Its handler puts a [`StreamEnd`] in the response's extensions and keeps a clone
//! for as long as the stream runs (in the body, or in the WebSocket's task); each middleware
//! [defers](StreamEnd::defer) what it would do at the end, and the deferred work runs when the
//! last clone is dropped, whichever way the stream ended.

use std::fmt;
use std::sync::{Arc, Mutex};

/// Work to do once.
type Hook = Box<dyn FnOnce() + Send>;

/// A handle on the end of one streamed answer; cheap to clone. See the [module docs](self).
#[derive(Clone, Default)]
pub struct StreamEnd(Arc<Hooks>);

#[derive(Default)]
struct Hooks(Mutex<Vec<Hook>>);

impl Drop for Hooks {
    fn drop(&mut self) {
        let hooks = std::mem::take(&mut *meshrpc::lock(&self.0));
        // The last registered first, as middleware unwinds from the inside out.
        for hook in hooks.into_iter().rev() {
            hook();
        }
    }
}

impl fmt::Debug for StreamEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamEnd")
            .field("hooks", &meshrpc::lock(&self.0.0).len())
            .finish()
    }
}

impl StreamEnd {
    /// A new end, with nothing deferred yet.
    pub fn new() -> StreamEnd {
        StreamEnd::default()
    }

    /// Runs `hook` when the stream ends (when the last clone of this handle is dropped).
    pub fn defer(&self, hook: impl FnOnce() + Send + 'static) {
        meshrpc::lock(&self.0.0).push(Box::new(hook));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn deferred_work_runs_once_when_the_last_handle_goes() {
        let ran = Arc::new(AtomicUsize::new(0));
        let end = StreamEnd::new();
        let body = end.clone();
        for _ in 0..2 {
            let ran = ran.clone();
            end.defer(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        drop(end);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the stream still runs");
        drop(body);
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
