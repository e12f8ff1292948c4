//! The Kubernetes objects a `PhotonCluster` stands for: the head's
//! Deployment and Service (and state PVC), the token Secret, and one Pod per
//! worker. Pure functions of the spec, so reconciling is comparing these with
//! what exists; every object is owned by the cluster, so deleting the
//! cluster deletes them all.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Secret, SecretKeySelector, Service, ServicePort, ServiceSpec,
    Toleration as CoreToleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::types::{PhotonCluster, Resources, WorkerGroup};
use crate::validate;

/// Default gRPC port of the head.
pub const HEAD_PORT: i32 = 6380;
/// Default HTTP port of the head (status page, metrics, probes).
pub const HEAD_METRICS_PORT: i32 = 8265;
/// HTTP port of each worker's raylet (metrics, probes).
pub const WORKER_METRICS_PORT: i32 = 8266;
/// Where the head keeps its state.
const SESSION_DIR: &str = "/var/lib/photon/session";
/// Label naming the cluster an object belongs to.
pub const CLUSTER_LABEL: &str = "photon.dev/cluster";
/// Label naming an object's role: `head` or `worker`.
pub const ROLE_LABEL: &str = "photon.dev/role";
/// Label naming a worker's group.
pub const GROUP_LABEL: &str = "photon.dev/group";
/// Annotation holding a worker's index in its group.
pub const INDEX_ANNOTATION: &str = "photon.dev/index";

/// The name of the cluster's head Deployment and Service.
pub fn head_name(cluster: &PhotonCluster) -> String {
    format!("{}-head", cluster.name_any())
}

/// The Secret holding the cluster token.
pub fn token_secret_name(cluster: &PhotonCluster) -> String {
    cluster
        .spec
        .token_secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-token", cluster.name_any()))
}

/// Where pods in the cluster reach the head.
pub fn head_address(cluster: &PhotonCluster) -> String {
    let namespace = cluster.namespace().unwrap_or_else(|| "default".into());
    let port = cluster.spec.head.port.unwrap_or(HEAD_PORT);
    format!("{}.{namespace}.svc:{port}", head_name(cluster))
}

/// The name of worker `index` of `group`.
pub fn worker_name(cluster: &PhotonCluster, group: &str, index: u32) -> String {
    format!("{}-{group}-{index}", cluster.name_any())
}

fn owner(cluster: &PhotonCluster) -> OwnerReference {
    cluster
        .controller_owner_ref(&())
        .expect("a cluster read from the API server has a name and uid")
}

fn labels(cluster: &PhotonCluster, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "photon".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "photon-operator".into(),
        ),
        (CLUSTER_LABEL.into(), cluster.name_any()),
        (ROLE_LABEL.into(), role.into()),
    ])
}

fn meta(cluster: &PhotonCluster, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner(cluster)]),
        ..Default::default()
    }
}

fn requirements(resources: Option<&Resources>) -> Option<ResourceRequirements> {
    let resources = resources?;
    let quantities = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(name, amount)| (name.clone(), Quantity(amount.clone())))
                .collect()
        })
    };
    Some(ResourceRequirements {
        requests: quantities(&resources.requests),
        limits: quantities(&resources.limits),
        ..Default::default()
    })
}

/// `photon` under tini, which reaps what job drivers leave behind (the
/// container's PID 1 would otherwise collect zombies).
fn tini_photon() -> Vec<String> {
    ["/usr/bin/tini", "--", "photon"].map(String::from).to_vec()
}

/// The images run as the `nonroot` user (uid 65532); `fs_group` lets it write
/// the head's state volume, which is often owned by root.
fn security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_UID),
        run_as_group: Some(NONROOT_UID),
        fs_group: Some(NONROOT_UID),
        ..Default::default()
    }
}

/// The images' `nonroot` user.
const NONROOT_UID: i64 = 65532;

fn http_probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// `POD_IP`, the pod's address, through the downward API.
fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `PHOTON_TOKEN` from the cluster's Secret.
fn token_env(cluster: &PhotonCluster) -> EnvVar {
    EnvVar {
        name: "PHOTON_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: token_secret_name(cluster),
                key: "token".into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The memory-backed `/dev/shm` where a node's object store lives.
fn shm_volume(cluster: &PhotonCluster) -> (Volume, VolumeMount) {
    let size = cluster
        .spec
        .shm_size
        .clone()
        .unwrap_or_else(|| "1Gi".into());
    (
        Volume {
            name: "shm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity(size)),
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "shm".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        },
    )
}

/// The token Secret, for when none exists yet.
pub fn token_secret(cluster: &PhotonCluster, token: &str) -> Secret {
    Secret {
        metadata: meta(
            cluster,
            token_secret_name(cluster),
            labels(cluster, "token"),
        ),
        string_data: Some(BTreeMap::from([("token".into(), token.into())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The head's PVC, when the spec asks for persistent state.
pub fn head_state_claim(cluster: &PhotonCluster) -> Option<PersistentVolumeClaim> {
    let size = cluster.spec.head.storage_size.clone()?;
    Some(PersistentVolumeClaim {
        metadata: meta(
            cluster,
            format!("{}-state", head_name(cluster)),
            labels(cluster, "head"),
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The head: a one-replica Deployment (recreated by Kubernetes when its pod
/// fails; it recovers its tables from the session dir on the PVC).
pub fn head_deployment(cluster: &PhotonCluster) -> Deployment {
    let port = cluster.spec.head.port.unwrap_or(HEAD_PORT);
    let metrics_port = cluster.spec.head.metrics_port.unwrap_or(HEAD_METRICS_PORT);
    let labels = labels(cluster, "head");
    let (shm, shm_mount) = shm_volume(cluster);
    let state = Volume {
        name: "state".into(),
        persistent_volume_claim: head_state_claim(cluster).map(|claim| {
            PersistentVolumeClaimVolumeSource {
                claim_name: claim.metadata.name.unwrap_or_default(),
                read_only: Some(false),
            }
        }),
        empty_dir: cluster
            .spec
            .head
            .storage_size
            .is_none()
            .then(EmptyDirVolumeSource::default),
        ..Default::default()
    };
    // A raylet with no CPUs or GPUs runs beside the head: job drivers run
    // on the head node and need a local raylet, whose leases spill to workers.
    let args = [
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "0",
        "--num-gpus",
        "0",
        "--host",
        "0.0.0.0",
        // Other nodes dial the pod's own address, never the wildcard.
        "--advertise-address",
        "$(POD_IP)",
        "--port",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([
        port.to_string(),
        "--metrics-port".into(),
        metrics_port.to_string(),
        // Prometheus scrapes pods without the cluster token; the status
        // page and job logs still need it.
        "--open-metrics".into(),
    ])
    .chain(["--session-dir".into(), SESSION_DIR.into()])
    .collect();
    let container = Container {
        name: "head".into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster.spec.image_pull_policy.clone(),
        command: Some(tini_photon()),
        args: Some(args),
        env: Some(vec![pod_ip_env(), token_env(cluster)]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: port,
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: metrics_port,
                ..Default::default()
            },
        ]),
        resources: requirements(cluster.spec.head.resources.as_ref()),
        liveness_probe: Some(http_probe("/healthz", metrics_port, 10)),
        readiness_probe: Some(http_probe("/readyz", metrics_port, 5)),
        volume_mounts: Some(vec![
            shm_mount,
            VolumeMount {
                name: "state".into(),
                mount_path: "/var/lib/photon".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(cluster, head_name(cluster), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            // One head at a time: two would fight over the state volume.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![shm, state]),
                    security_context: Some(security_context()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The head's Service: gRPC for raylets, drivers and `photon job`, HTTP for
/// the status page and metrics.
pub fn head_service(cluster: &PhotonCluster) -> Service {
    let port = cluster.spec.head.port.unwrap_or(HEAD_PORT);
    let metrics_port = cluster.spec.head.metrics_port.unwrap_or(HEAD_METRICS_PORT);
    Service {
        metadata: meta(cluster, head_name(cluster), labels(cluster, "head")),
        spec: Some(ServiceSpec {
            type_: cluster.spec.head.service_type.clone(),
            selector: Some(labels(cluster, "head")),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port,
                    target_port: Some(IntOrString::Int(port)),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("http".into()),
                    port: metrics_port,
                    target_port: Some(IntOrString::Int(metrics_port)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CPUs of a Kubernetes quantity ("2", "1500m"), for the raylet's `--num-cpus`.
fn cpus(quantity: &str) -> Option<f64> {
    match quantity.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().ok().map(|m| m / 1000.0),
        None => quantity.parse().ok(),
    }
}

/// Worker `index` of `group`: a raylet joining the head, with `--num-cpus`
/// and `--num-gpus` from the pod's limits (GPUs must be whole: checked
/// before anything is created).
pub fn worker_pod(cluster: &PhotonCluster, group: &WorkerGroup, index: u32) -> Pod {
    let mut labels = labels(cluster, "worker");
    labels.insert(GROUP_LABEL.into(), group.name.clone());
    let mut args: Vec<String> = ["start", "--block", "--address"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend([head_address(cluster), "--host".into(), "$(POD_IP)".into()]);
    args.extend([
        "--metrics-port".into(),
        WORKER_METRICS_PORT.to_string(),
        "--open-metrics".into(),
    ]);
    if let Some(resources) = &group.resources {
        if let Some(cpu) = resources
            .limits
            .get("cpu")
            .or_else(|| resources.requests.get("cpu"))
            .and_then(|q| cpus(q))
        {
            args.extend(["--num-cpus".into(), cpu.to_string()]);
        }
        let gpus = validate::gpus(resources).unwrap_or(0);
        args.extend(["--num-gpus".into(), gpus.to_string()]);
    }
    if let Some(bytes) = cluster.spec.object_store_memory {
        args.extend(["--object-store-memory".into(), bytes.to_string()]);
    }
    let (shm, shm_mount) = shm_volume(cluster);
    let container = Container {
        name: "raylet".into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster.spec.image_pull_policy.clone(),
        command: Some(tini_photon()),
        args: Some(args),
        env: Some(vec![
            pod_ip_env(),
            token_env(cluster),
            env_var("PHOTON_HOME", "/tmp/photon"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: WORKER_METRICS_PORT,
            ..Default::default()
        }]),
        resources: requirements(group.resources.as_ref()),
        liveness_probe: Some(http_probe("/healthz", WORKER_METRICS_PORT, 10)),
        readiness_probe: Some(http_probe("/readyz", WORKER_METRICS_PORT, 5)),
        volume_mounts: Some(vec![shm_mount]),
        ..Default::default()
    };
    let mut metadata = meta(cluster, worker_name(cluster, &group.name, index), labels);
    metadata.annotations = Some(BTreeMap::from([(
        INDEX_ANNOTATION.into(),
        index.to_string(),
    )]));
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![shm]),
            node_selector: (!group.node_selector.is_empty()).then(|| group.node_selector.clone()),
            tolerations: (!group.tolerations.is_empty()).then(|| {
                group
                    .tolerations
                    .iter()
                    .map(|t| CoreToleration {
                        key: t.key.clone(),
                        operator: t.operator.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                        toleration_seconds: t.toleration_seconds,
                    })
                    .collect()
            }),
            // A worker that fails is replaced by the operator, not restarted
            // in place: it must join as a new node.
            restart_policy: Some("Never".into()),
            security_context: Some(security_context()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What to do with one group's worker pods: delete failed ones, delete the
/// excess above `desired` (idle workers first, then the highest indices),
/// and create the missing ones at the lowest free indices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WorkerPlan {
    /// Indices to create pods for.
    pub create: Vec<u32>,
    /// Names of pods to delete, sorted.
    pub delete: Vec<String>,
}

/// One existing worker pod: its index and whether it failed.
#[derive(Debug, Clone)]
pub struct ExistingWorker {
    /// Its name.
    pub name: String,
    /// Its index in the group.
    pub index: u32,
    /// Phase Failed (or Succeeded: a raylet never exits by itself).
    pub ended: bool,
    /// Being deleted already.
    pub terminating: bool,
}

/// The plan for `desired` workers given `existing` ones; `idle` names
/// workers to remove first when scaling down.
pub fn plan_workers(desired: u32, existing: &[ExistingWorker], idle: &[String]) -> WorkerPlan {
    let mut plan = WorkerPlan::default();
    let mut live: Vec<&ExistingWorker> = Vec::new();
    for worker in existing.iter().filter(|w| !w.terminating) {
        if worker.ended {
            plan.delete.push(worker.name.clone());
        } else {
            live.push(worker);
        }
    }
    // Victims last in `live`: busy before idle, then by index.
    live.sort_by_key(|w| (idle.contains(&w.name), w.index));
    while live.len() > desired as usize {
        let victim = live.pop().expect("more than desired");
        plan.delete.push(victim.name.clone());
    }
    let missing = desired as usize - live.len();
    // An index stays taken until its pod is gone (its name is).
    plan.create = (0..)
        .filter(|index| !existing.iter().any(|w| w.index == *index))
        .take(missing)
        .collect();
    plan.delete.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PhotonClusterSpec;

    fn cluster() -> PhotonCluster {
        let spec: PhotonClusterSpec = serde_json::from_value(serde_json::json!({
            "image": "photon:1",
            "workerGroups": [{
                "name": "gpu", "replicas": 2,
                "resources": {"limits": {"cpu": "1500m", "nvidia.com/gpu": "1"}},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            }],
            "shmSize": "4Gi",
            "objectStoreMemory": 1073741824,
            "head": {"storageSize": "1Gi"}
        }))
        .unwrap();
        let mut cluster = PhotonCluster::new("demo", spec);
        cluster.metadata.namespace = Some("ml".into());
        cluster.metadata.uid = Some("uid-1".into());
        cluster
    }

    #[test]
    fn a_worker_pod_joins_the_head_with_its_gpus_cpus_and_shm() {
        let cluster = cluster();
        let pod = worker_pod(&cluster, &cluster.spec.worker_groups[0], 1);
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-gpu-1"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("PhotonCluster", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = pod.spec.unwrap();
        let args = spec.containers[0].args.clone().unwrap().join(" ");
        assert_eq!(
            args,
            "start --block --address demo-head.ml.svc:6380 --host $(POD_IP) --metrics-port 8266 \
             --open-metrics --num-cpus 1.5 --num-gpus 1 --object-store-memory 1073741824"
        );
        let shm = &spec.volumes.unwrap()[0];
        let empty_dir = shm.empty_dir.as_ref().unwrap();
        assert_eq!(empty_dir.medium.as_deref(), Some("Memory"));
        assert_eq!(empty_dir.size_limit, Some(Quantity("4Gi".into())));
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_head_keeps_its_state_on_a_claim_and_is_probed() {
        let cluster = cluster();
        let deployment = head_deployment(&cluster);
        let template = deployment.spec.unwrap().template.spec.unwrap();
        let volumes = template.volumes.unwrap();
        let state = volumes.iter().find(|v| v.name == "state").unwrap();
        assert_eq!(
            state.persistent_volume_claim.as_ref().unwrap().claim_name,
            "demo-head-state"
        );
        let container = &template.containers[0];
        assert!(
            container
                .args
                .as_ref()
                .unwrap()
                .join(" ")
                .contains("--session-dir /var/lib/photon/session")
        );
        let ready = container
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (ready.path.as_deref(), &ready.port),
            (Some("/readyz"), &IntOrString::Int(8265))
        );
        assert_eq!(
            head_state_claim(&cluster).unwrap().metadata.name.as_deref(),
            Some("demo-head-state")
        );
        let service = head_service(&cluster).spec.unwrap();
        assert_eq!(service.ports.unwrap().len(), 2);
    }

    #[test]
    fn plans_scale_idle_workers_or_the_top_down_and_replace_failed_ones() {
        let worker = |index, ended| ExistingWorker {
            name: format!("w-{index}"),
            index,
            ended,
            terminating: false,
        };
        // 2 → 4: create 2 and 3.
        let plan = plan_workers(4, &[worker(0, false), worker(1, false)], &[]);
        assert_eq!(
            plan,
            WorkerPlan {
                create: vec![2, 3],
                delete: vec![]
            }
        );
        // 3 → 1: delete the top two, or the idle ones first.
        let three = [worker(0, false), worker(1, false), worker(2, false)];
        assert_eq!(plan_workers(1, &three, &[]).delete, ["w-1", "w-2"]);
        assert_eq!(plan_workers(2, &three, &["w-0".into()]).delete, ["w-0"]);
        // A failed pod is deleted and replaced at once, under a free index
        // (its own is taken until it is gone).
        let plan = plan_workers(2, &[worker(0, true), worker(1, false)], &[]);
        assert_eq!(
            plan,
            WorkerPlan {
                create: vec![2],
                delete: vec!["w-0".into()]
            }
        );
        let plan = plan_workers(2, &[worker(1, false)], &[]);
        assert_eq!(plan.create, [0]);
    }
}
