//! Writes the CRDs generated from the operator's types to a directory
//! (default `k8s/crds`): `cargo run -p photon-operator --bin photon-crdgen`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "k8s/crds".into());
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in photon_operator::crd_yaml() {
        let path = std::path::Path::new(&dir).join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
