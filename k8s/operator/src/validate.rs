//! Checks a `PhotonCluster` spec before anything is created: a refused spec
//! gets a `Valid=False` condition with the reason, and no objects.

use std::collections::HashSet;

use crate::types::{PhotonClusterSpec, Resources};

/// The GPU resource name of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Every problem of `spec`, each naming the field and what to do.
pub fn problems(spec: &PhotonClusterSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.image.trim().is_empty() {
        problems.push("spec.image is empty: name the image with the photon binary".into());
    }
    if let Some(kind) = &spec.head.service_type
        && !["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind.as_str())
    {
        problems.push(format!(
            "spec.head.serviceType {kind:?} is not ClusterIP, NodePort or LoadBalancer"
        ));
    }
    let mut names = HashSet::new();
    for (i, group) in spec.worker_groups.iter().enumerate() {
        let at = format!("spec.workerGroups[{i}] ({:?})", group.name);
        if !is_dns_label(&group.name) {
            problems.push(format!(
                "{at}: the name must be a DNS label (lower-case letters, digits, '-', at most 40 characters)"
            ));
        }
        if !names.insert(group.name.as_str()) {
            problems.push(format!("{at}: another group has this name"));
        }
        let (min, max) = bounds(group.replicas, group.min_replicas, group.max_replicas);
        if min < 0 || group.replicas < 0 {
            problems.push(format!(
                "{at}: replicas and minReplicas must not be negative"
            ));
        }
        if max < min {
            problems.push(format!(
                "{at}: maxReplicas {max} is less than minReplicas {min}"
            ));
        }
        if let Some(resources) = &group.resources
            && let Err(problem) = gpus(resources)
        {
            problems.push(format!("{at}: {problem}"));
        }
    }
    problems
}

/// The longest cluster name: its Service `<name>-head` must be a DNS label
/// (at most 63 characters), and so must the `photon.dev/cluster` label value.
pub const MAX_CLUSTER_NAME: usize = 63 - "-head".len();

/// What is wrong with a cluster's name, if anything.
pub fn name_problem(name: &str) -> Option<String> {
    (name.len() > MAX_CLUSTER_NAME).then(|| {
        format!(
            "the name {name:?} has {} characters: at most {MAX_CLUSTER_NAME} fit (its Service \
             {name}-head must be a DNS label of at most 63); choose a shorter name",
            name.len()
        )
    })
}

/// `(min, max)` replicas of a group, defaulting to `replicas`.
pub fn bounds(replicas: i32, min: Option<i32>, max: Option<i32>) -> (i32, i32) {
    (
        min.unwrap_or(replicas),
        max.unwrap_or(replicas.max(min.unwrap_or(0))),
    )
}

/// Whole GPUs a worker pod asks for (its `nvidia.com/gpu` limit, else request).
pub fn gpus(resources: &Resources) -> Result<u32, String> {
    let Some(amount) = resources
        .limits
        .get(GPU_RESOURCE)
        .or_else(|| resources.requests.get(GPU_RESOURCE))
    else {
        return Ok(0);
    };
    amount.trim().parse::<u32>().map_err(|_| {
        format!(
            "{GPU_RESOURCE} {amount:?} is not a whole number: Kubernetes hands out whole GPUs \
             (share one among actors with num_gpus fractions instead)"
        )
    })
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WorkerGroup;

    #[test]
    fn cluster_names_must_leave_room_for_the_head_service() {
        assert_eq!(name_problem(&"a".repeat(58)), None);
        let problem = name_problem(&"a".repeat(59)).unwrap();
        assert!(
            problem.contains("has 59 characters: at most 58 fit"),
            "{problem}"
        );
    }

    fn spec(groups: Vec<WorkerGroup>) -> PhotonClusterSpec {
        PhotonClusterSpec {
            image: "photon:1".into(),
            image_pull_policy: None,
            head: Default::default(),
            worker_groups: groups,
            shm_size: None,
            object_store_memory: None,
            token_secret_name: None,
            autoscaling: None,
        }
    }

    #[test]
    fn bad_bounds_fractional_gpus_and_names_are_refused_with_the_field() {
        let mut gpu = Resources::default();
        gpu.limits.insert(GPU_RESOURCE.into(), "0.5".into());
        let groups = vec![
            WorkerGroup {
                name: "cpu".into(),
                replicas: 2,
                min_replicas: Some(3),
                max_replicas: Some(1),
                ..Default::default()
            },
            WorkerGroup {
                name: "GPU_group".into(),
                replicas: 1,
                resources: Some(gpu),
                ..Default::default()
            },
        ];
        let problems = problems(&spec(groups));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("maxReplicas 1 is less than minReplicas 3"));
        assert!(problems[1].contains("DNS label"));
        assert!(problems[2].contains("\"0.5\" is not a whole number"));
        assert!(
            super::problems(&spec(vec![WorkerGroup {
                name: "ok".into(),
                replicas: 2,
                ..Default::default()
            }]))
            .is_empty()
        );
    }
}
