//! The runtime the NATS client runs on: a current-thread tokio runtime on a thread of
//! its own (the root flavour, which has no runtime), or the caller's runtime (the
//! tokio flavour).
//!
//! The root flavour waits for the client from ordinary threads with
//! [`ClientRuntime::block_on`], which spawns the future on the client runtime and
//! waits on a channel with a deadline, so a server that stops answering turns into a
//! clear error, never a hang. The tokio flavour never blocks: it awaits.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::tokio::runtime::Handle;

use crate::error::{MessagingError, MessagingResult};

/// Where the client's tasks run.
pub(crate) enum ClientRuntime {
    /// A runtime on a thread of the node's own (root flavour).
    Owned(OwnedRuntime),
    /// The tokio flavour's runtime.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Borrowed(Handle),
}

/// A current-thread runtime driven by a thread of its own until dropped.
pub(crate) struct OwnedRuntime {
    handle: Handle,
    stop: Option<::tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ClientRuntime {
    /// Starts a runtime on a new thread named after the node.
    pub(crate) fn owned(node: &str) -> MessagingResult<Self> {
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MessagingError::System(format!("cluster: no client runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = ::tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("agent-messaging-nats-{node}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still running (the node's loops) are cancelled here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| MessagingError::System(format!("cluster: no client thread: {e}")))?;
        Ok(ClientRuntime::Owned(OwnedRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    /// The handle tasks are spawned on.
    pub(crate) fn handle(&self) -> &Handle {
        match self {
            ClientRuntime::Owned(owned) => &owned.handle,
            ClientRuntime::Borrowed(handle) => handle,
        }
    }

    /// Whether ordinary threads may wait on it ([`block_on`](Self::block_on)).
    pub(crate) fn is_owned(&self) -> bool {
        matches!(self, ClientRuntime::Owned(_))
    }

    /// Runs `future` on the runtime and waits for it at most `timeout`; `what` names
    /// the operation in the error. Only for an owned runtime (the tokio flavour awaits
    /// instead: blocking one of its threads could wait on itself).
    pub(crate) fn block_on<T, F>(
        &self,
        what: &str,
        timeout: Duration,
        future: F,
    ) -> MessagingResult<T>
    where
        T: Send + 'static,
        F: Future<Output = MessagingResult<T>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let task = self.handle().spawn(async move {
            let _ = tx.send(future.await);
        });
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                task.abort();
                Err(MessagingError::System(format!(
                    "cluster: {what} did not finish within {timeout:?}"
                )))
            }
        }
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
