//! The Kubernetes manifests in deploy/kubernetes say what the blocker accepts: every embedded
//! `policy.toml` loads, and every container's `args` parse as a `blocker` command line
//! (`scripts/check-deploy.sh` validates the manifests themselves against Kubernetes' schemas).
use std::path::{Path, PathBuf};

use cgroup_connect::{
    cli::Cli,
    policy::{Policy, Sources},
};
use clap::Parser as _;

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// The lines of the block under each line that ends with `key` (a YAML block scalar or
/// sequence), without their common indentation.
fn blocks<'a>(text: &'a str, key: &str) -> Vec<Vec<&'a str>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_end().ends_with(key) {
            continue;
        }
        let outer = line.len() - line.trim_start().len();
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
            .copied()
            .collect();
        let inner = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min();
        found.push(body.iter().map(|l| l.get(inner.unwrap_or(0)..).unwrap_or("")).collect());
    }
    found
}

#[test]
fn every_embedded_policy_loads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut seen = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for (i, body) in blocks(&text, "policy.toml: |").into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, body.join("\n")).expect("write policy");
            let policy = Policy::load(&Sources { policy: Some(path), ..Sources::default() });
            let policy = policy.unwrap_or_else(|e| panic!("{}: policy {i}: {e}", file.display()));
            assert!(!policy.rules.is_empty(), "{}: policy {i} has no rule", file.display());
            seen += 1;
        }
    }
    assert!(seen >= 2, "found {seen} policies");
}

#[test]
fn every_container_command_line_parses() {
    let mut seen = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for body in blocks(&text, "args:") {
            // `$(POD_UID)` is the downward API's: the kubelet puts the pod's UID there.
            let args: Vec<String> = body
                .iter()
                .filter_map(|l| l.strip_prefix("- "))
                .map(|a| a.replace("$(POD_UID)", "0c0a3f0e-1111-2222-3333-444455556666"))
                .collect();
            let parsed =
                Cli::try_parse_from(std::iter::once("blocker".to_owned()).chain(args.clone()));
            parsed.unwrap_or_else(|e| panic!("{}: blocker {args:?}: {e}", file.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "found {seen} command lines");
}
