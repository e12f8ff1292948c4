//! The CRD YAML under `k8s/crds/` is what the types generate.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, yaml) in photon_operator::crd_yaml() {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == yaml,
            "k8s/crds/{file} is out of date with the types in k8s/operator/src/types.rs: \
             run `cargo run -p photon-operator --bin photon-crdgen`"
        );
    }
}
