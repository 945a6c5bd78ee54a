//! Writes the CRD YAML files generated from the Rust types into a directory
//! (default `manifests/crds`). `cargo run -p murmuration-crds --bin crdgen [DIR]`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in murmuration_crds::crd::all() {
        let path = dir.join(file);
        std::fs::write(&path, murmuration_crds::crd::to_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
