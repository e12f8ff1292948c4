//! Kubernetes Events about what the operator did and why (`kubectl
//! describe photoncluster …` shows them), through kube-rs' recorder
//! (events.k8s.io/v1; a repeated event becomes a count on the first).
//! Best effort: an event the API server refuses is logged, never a reason
//! to fail a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::warn;

/// The `reportingController` of the operator's events.
pub const CONTROLLER: &str = "photon-operator";

/// Publishes events for the operator.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// Events through `client`, reported by this pod (`POD_NAME`, set from
    /// the downward API in the operator's Deployment) when known.
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// A `Normal` event about `object`.
    pub async fn normal<K>(&self, object: &K, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(object, None, EventType::Normal, reason, action, note)
            .await;
    }

    /// A `Warning` event about `object`.
    pub async fn warning<K>(&self, object: &K, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(object, None, EventType::Warning, reason, action, note)
            .await;
    }

    /// A `Normal` event about `object` that acted on `pod` (one of its
    /// pods). Naming the pod keeps each pod's event apart: the recorder
    /// folds events with the same object, reason and related object into
    /// one, keeping the first note.
    pub async fn about_pod<K>(
        &self,
        object: &K,
        pod: &str,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: object.meta().namespace.clone(),
            ..Default::default()
        };
        self.publish(object, Some(pod), EventType::Normal, reason, action, note)
            .await;
    }

    async fn publish<K>(
        &self,
        object: &K,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            // The API server refuses notes over 1 kB.
            note: Some(truncate(note, 1024)),
            action: action.into(),
            secondary: related,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            warn!(%error, reason, "cannot publish a Kubernetes event");
        }
    }
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn notes_are_cut_on_character_boundaries() {
        assert_eq!(truncate("short".into(), 1024), "short");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(truncate("abé".into(), 3), "ab");
        assert_eq!(truncate("x".repeat(2000), 1024).len(), 1024);
    }
}
