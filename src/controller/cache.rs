//! Shared caches: one watch per kind fills a store that several controllers
//! read, and tells them of changes.
//!
//! The subscribers of a shared store hear of objects that were added or
//! changed, never of deleted ones; a controller that must act on a deletion
//! (release a deleted node's address) gets the deleted object on a channel.

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{Lookup, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Receives the objects deleted from a shared store.
pub type Deleted<K> = mpsc::UnboundedReceiver<Arc<K>>;

/// Where a shared store sends the objects deleted from it.
#[derive(Clone)]
pub struct OnDelete<K> {
    senders: Vec<mpsc::UnboundedSender<Arc<K>>>,
}

impl<K> Default for OnDelete<K> {
    fn default() -> Self {
        Self { senders: Vec::new() }
    }
}

impl<K> OnDelete<K> {
    /// A new receiver of every deletion from now on.
    pub fn subscribe(&mut self) -> Deleted<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders.push(tx);
        rx
    }

    fn send(&self, obj: K) {
        let obj = Arc::new(obj);
        for sender in &self.senders {
            // A controller that stopped no longer listens; nothing to do.
            let _ = sender.send(obj.clone());
        }
    }
}

/// Watches `api` into the shared store behind `writer` until `shutdown`,
/// forwarding deleted objects to `on_delete`; watch errors are retried with
/// backoff and logged under `kind`.
pub async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    writer: Writer<K>,
    on_delete: OnDelete<K>,
    shutdown: CancellationToken,
) where
    K: kube::Resource + Lookup + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    <K as Lookup>::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    <K as kube::Resource>::DynamicType: Default + Eq + Hash + Clone,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // managedFields are the bulk of an object and nothing here reads them.
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect_shared(writer)
        .take_until(async move { shutdown.cancelled().await });
    stream
        .for_each(|event| {
            match event {
                Ok(watcher::Event::Delete(obj)) => on_delete.send(obj),
                Ok(_) => {}
                Err(err) => tracing::warn!(%kind, error = %err, "watch failed; retrying with backoff"),
            }
            futures::future::ready(())
        })
        .await;
}

/// The deleted objects as a stream.
pub fn stream<K>(deleted: Deleted<K>) -> impl futures::Stream<Item = Arc<K>> {
    futures::stream::unfold(deleted, |mut deleted| async move { deleted.recv().await.map(|obj| (obj, deleted)) })
}
