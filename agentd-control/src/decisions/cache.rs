//! Decision inputs loaded once and shared, with the decision sets evaluated from them. A change
//! on this replica bumps the change generation and wakes every watch; the watches share one
//! load per generation (and second) instead of each running the same queries and parsing every
//! policy again, and one evaluation per distinct [`HostKey`] and time. What a set becomes for a
//! host (its digest, its wire form) is the caller's `T`, made once per set.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::time::Instant;

use super::{HostKey, Inputs};
use crate::{
    clock::UnixTime,
    error::Result,
    policy::{Decision, evaluate::Place},
};

/// Inputs, and the sets evaluated from them so far, one per [`HostKey`] and time, shared by
/// every host with that key. They live and go with the inputs, so a change (which loads new
/// inputs) never sees an older set.
pub struct Shared<T> {
    pub inputs: Inputs,
    sets: Mutex<HashMap<(HostKey, UnixTime), Arc<T>>>,
}

impl<T> Shared<T> {
    fn new(inputs: Inputs) -> Self {
        Self {
            inputs,
            sets: Mutex::default(),
        }
    }

    /// The set of a host with these facts at `now`, evaluated and made by `make` on first use.
    pub fn set_for(
        &self,
        host: &Place,
        now: UnixTime,
        make: impl FnOnce(&[Decision]) -> T,
    ) -> Arc<T> {
        let key = (self.inputs.host_key(host), now);
        let sets = || self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = sets().get(&key) {
            return Arc::clone(set);
        }
        // Evaluated without the lock: two hosts racing for the same key evaluate the same set.
        let set = Arc::new(make(&self.inputs.decide_for_host(host, now)));
        Arc::clone(sets().entry(key).or_insert(set))
    }
}

/// The inputs last loaded, and what they reflect.
struct Cached<T> {
    /// The change generation read before loading: the inputs reflect every change signalled
    /// up to it.
    generation: u64,
    /// The time they were loaded for (risk windows and access-package expiry depend on it).
    now: UnixTime,
    /// When loading started: the inputs reflect every write committed before it.
    load_started: Instant,
    shared: Arc<Shared<T>>,
}

/// The one load of decision inputs that the watches of this replica share.
pub struct InputsCache<T> {
    cached: tokio::sync::Mutex<Option<Cached<T>>>,
}

impl<T> Default for InputsCache<T> {
    fn default() -> Self {
        Self {
            cached: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T> InputsCache<T> {
    /// The inputs for change `generation` at `now`: the cached ones if they reflect both, and
    /// were loaded after `fresh_after` where that is given (a watch woken by polling, for
    /// changes made through another replica or by time alone); else `load`ed, and cached.
    pub async fn get(
        &self,
        generation: u64,
        now: UnixTime,
        fresh_after: Option<Instant>,
        load: impl Future<Output = Result<Inputs>>,
    ) -> Result<Arc<Shared<T>>> {
        let usable = |cached: &Cached<T>| {
            cached.generation == generation
                && cached.now == now
                && fresh_after.is_none_or(|after| cached.load_started >= after)
        };
        // Held while loading: the watches woken by one change wait for one load.
        let mut cache = self.cached.lock().await;
        if let Some(cached) = cache.as_ref().filter(|cached| usable(cached)) {
            return Ok(Arc::clone(&cached.shared));
        }
        let load_started = Instant::now();
        let shared = Arc::new(Shared::new(load.await?));
        *cache = Some(Cached {
            generation,
            now,
            load_started,
            shared: Arc::clone(&shared),
        });
        Ok(shared)
    }
}
