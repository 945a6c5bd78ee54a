//! Writes the CRD YAML files generated from the Rust types into a directory (default:
//! `manifests/crds` and the Helm chart's `charts/murmuration/crds`).
//! `cargo run -p murmuration-crds --bin crdgen [DIR]`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dirs = match std::env::args().nth(1) {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![
            root.join("manifests/crds"),
            root.join("charts/murmuration/crds"),
        ],
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in murmuration_crds::crd::all() {
            let path = dir.join(file);
            std::fs::write(&path, murmuration_crds::crd::to_yaml(&crd))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
