//! Group commit: callers that each need one small write queue it, and one task writes every
//! queued item in one transaction, batch after batch, until the queue is empty. After a change
//! every host's watch settles a decision version and every host acknowledges it; batching
//! makes that a few commits (and syncs to disk) instead of one per host.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::oneshot;

/// Items waiting to be written, each with where its result goes (`None`: the batch failed,
/// write it alone).
pub(super) struct Queue<T, R> {
    pending: Vec<(T, oneshot::Sender<Option<R>>)>,
    /// Whether a task is writing the queue.
    draining: bool,
}

impl<T, R> Default for Queue<T, R> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            draining: false,
        }
    }
}

/// Queues `item` and waits for its result; `write` writes a batch in one transaction and
/// returns one result per item, in order, or `None` when the batch failed (then every caller
/// gets `None` and writes its item alone, getting its own error).
pub(super) async fn submit<T, R, W, F>(
    queue: &Arc<Mutex<Queue<T, R>>>,
    item: T,
    write: W,
) -> Option<R>
where
    T: Send + 'static,
    R: Send + 'static,
    W: Fn(Vec<T>) -> F + Send + 'static,
    F: Future<Output = Option<Vec<R>>> + Send + 'static,
{
    let (reply, result) = oneshot::channel();
    let start = {
        let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.pending.push((item, reply));
        !std::mem::replace(&mut queue.draining, true)
    };
    if start {
        tokio::spawn(drain(Arc::clone(queue), write));
    }
    result.await.ok().flatten()
}

async fn drain<T, R, W, F>(queue: Arc<Mutex<Queue<T, R>>>, write: W)
where
    W: Fn(Vec<T>) -> F,
    F: Future<Output = Option<Vec<R>>>,
{
    loop {
        let batch = {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.pending.is_empty() {
                queue.draining = false;
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
        match write(items).await {
            Some(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Some(result));
                }
            }
            None => {
                for reply in replies {
                    let _ = reply.send(None);
                }
            }
        }
    }
}
