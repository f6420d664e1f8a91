//! Writes `docs/api.md`, the API reference generated from the RolloutPolicy CRD.
//!
//! Usage: `docgen [REPO_ROOT]` (default: this repository) or `docgen --stdout`.

use std::path::PathBuf;

use quiesce_e2e::apidoc::{API_DOC_PATH, render};

fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1);
    let doc = render();
    if arg.as_deref() == Some("--stdout") {
        print!("{doc}");
        return Ok(());
    }
    let root = arg
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let path = root.join(API_DOC_PATH);
    std::fs::create_dir_all(path.parent().expect("docs/"))?;
    std::fs::write(&path, doc)?;
    eprintln!("docgen: wrote {}", path.display());
    Ok(())
}
