//! The custom resources: `PhotonCluster` (a head and groups of workers) and
//! `PhotonJob` (a program run on a cluster it creates or selects). The CRD
//! YAML under `k8s/crds/` is generated from these types (`photon-crdgen`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Photon cluster: one head and groups of worker nodes (raylets).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "photon.dev",
    version = "v1alpha1",
    kind = "PhotonCluster",
    plural = "photonclusters",
    shortname = "pcl",
    namespaced,
    status = "PhotonClusterStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Head","type":"string","jsonPath":".status.headAddress"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PhotonClusterSpec {
    /// The image with the `photon` binary.
    pub image: String,
    /// Kubernetes' image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The head node.
    #[serde(default)]
    pub head: HeadSpec,
    /// Groups of worker nodes.
    #[serde(default)]
    pub worker_groups: Vec<WorkerGroup>,
    /// Size of each pod's `/dev/shm` (a memory-backed emptyDir), where the
    /// object store lives; default 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    /// Object store bytes per worker (default: 30% of the pod's memory as the raylet sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store_memory: Option<i64>,
    /// The Secret holding the cluster token (key `token`); default
    /// `<cluster>-token`, generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// Scale worker groups between min and max from the head's pending demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// The head node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadSpec {
    /// CPU and memory of the head pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// How the head's Service is exposed: ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// gRPC port (default 6380).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Status page, metrics and probes port (default 8265).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<i32>,
    /// A PersistentVolumeClaim of this size keeps the head's state (its
    /// session dir) across head restarts; without it, an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<String>,
}

/// A group of identical worker nodes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroup {
    /// The group's name (part of its pods' names).
    pub name: String,
    /// Workers wanted (kept between min and max).
    pub replicas: i32,
    /// The fewest workers (default: replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    /// The most workers (default: replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// Requests and limits of each worker pod; a whole `nvidia.com/gpu`
    /// limit becomes the raylet's `--num-gpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Requests and limits as Kubernetes quantities ("2", "500m", "4Gi").
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    /// What the pod is guaranteed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// What the pod may use at most.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// A pod toleration, as in Kubernetes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// The taint key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Exists or Equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The taint value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// How long a NoExecute taint is tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// Autoscaling of worker groups.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// On or off.
    #[serde(default)]
    pub enabled: bool,
    /// Idle time before a worker above min is removed (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<i64>,
}

/// What the operator observed of a cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhotonClusterStatus {
    /// Ready, HeadReady, WorkersReady (and Valid when the spec is refused).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Ready and desired workers per group.
    #[serde(default)]
    pub worker_groups: Vec<WorkerGroupStatus>,
    /// Where the head is reached inside the cluster (`service.namespace:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_address: Option<String>,
    /// The spec generation this status is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One condition, as Kubernetes conditions go.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, HeadReady, WorkersReady, Valid.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// A CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// What it means, for people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Workers of one group.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroupStatus {
    /// The group.
    pub name: String,
    /// Running and ready pods.
    pub ready_replicas: i32,
    /// Pods wanted now.
    pub desired_replicas: i32,
}

/// A job: a program run with `photon job submit` on a cluster the operator
/// creates for it (`clusterSpec`) or an existing one (`clusterSelector`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "photon.dev",
    version = "v1alpha1",
    kind = "PhotonJob",
    plural = "photonjobs",
    shortname = "pjob",
    namespaced,
    status = "PhotonJobStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".status.jobId"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PhotonJobSpec {
    /// The program and its arguments.
    pub entrypoint: Vec<String>,
    /// Environment of the driver.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A cluster to create for the job (`<job>-cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_spec: Option<PhotonClusterSpec>,
    /// Labels of an existing PhotonCluster to run on instead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_selector: BTreeMap<String, String>,
    /// Delete the created cluster when the job ends (default true).
    #[serde(default = "default_true")]
    pub shutdown_after_job_finishes: bool,
    /// Delete the created cluster this long after the job ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Resubmissions after a failure (default 0).
    #[serde(default)]
    pub backoff_limit: i32,
    /// The job is stopped after running this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
}

fn default_true() -> bool {
    true
}

/// What the operator observed of a job.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhotonJobStatus {
    /// The head's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Pending, ClusterStarting, Running, Succeeded, Failed, Stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The cluster it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Submissions so far.
    #[serde(default)]
    pub attempts: i32,
    /// Why it is in its state, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
