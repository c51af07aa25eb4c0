//! `girder crdgen`: the CRDs as YAML. `crds/` and the chart's `crds/` hold
//! this output; a test fails when they drift.

use crate::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CrdgenArgs {
    /// Write one `<group>_<plural>.yaml` file per CRD into these directories
    /// instead of printing them.
    #[arg(long = "out-dir")]
    out_dirs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CrdgenError {
    #[error("cannot render CRD {name}: {source}")]
    Render { name: String, source: serde_yaml::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The file name of a CRD, e.g. `girder.dev_workloads.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as a YAML document.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, CrdgenError> {
    serde_yaml::to_string(crd)
        .map_err(|source| CrdgenError::Render { name: crd.metadata.name.clone().unwrap_or_default(), source })
}

pub fn main(args: CrdgenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let crds = api::crds();
    if args.out_dirs.is_empty() {
        for crd in &crds {
            print!("---\n{}", render(crd)?);
        }
        return Ok(());
    }
    for dir in &args.out_dirs {
        for crd in &crds {
            let path = dir.join(file_name(crd));
            std::fs::write(&path, render(crd)?).map_err(|source| CrdgenError::Write { path, source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` and `charts/girder/crds/` must be exactly what crdgen prints;
    /// run `make crds` after changing a type.
    #[test]
    fn committed_crds_match_the_types() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for dir in ["crds", "charts/girder/crds"] {
            for crd in api::crds() {
                let path = root.join(dir).join(file_name(&crd));
                let committed = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
                assert!(
                    committed == render(&crd).unwrap(),
                    "{} drifted from the Rust types; run `make crds`",
                    path.display()
                );
            }
        }
    }

    /// `kubectl explain` is only useful when every field says what it is.
    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let here = format!("{path}.{name}");
                    let top_level = matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                    if !top_level && prop.get("description").and_then(|d| d.as_str()).is_none_or(str::is_empty) {
                        missing.push(here.clone());
                    }
                    walk(&here, prop, missing);
                }
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        for crd in api::crds() {
            let value = serde_json::to_value(&crd).unwrap();
            let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            walk(&crd.spec.names.kind, schema, &mut missing);
        }
        assert!(missing.is_empty(), "fields without a description:\n{}", missing.join("\n"));
    }
}
