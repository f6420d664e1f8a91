//! Writes the RolloutPolicy CRD YAML to `crds/` and the Helm chart's `crds/`.
//!
//! Usage: `crdgen [REPO_ROOT]` (default: the repository this crate lives in), or
//! `crdgen --stdout` to print it. Run through `make crds`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let yaml = quiesce_api::crd::crd_yaml();
    if arg.as_deref() == Some("--stdout") {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    let root = arg
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    for path in quiesce_api::crd::CRD_PATHS {
        let path = root.join(path);
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &yaml));
        if let Err(err) = result {
            eprintln!("crdgen: writing {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
