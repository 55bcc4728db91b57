//! Builds the BPF crate (nightly, `-Z build-std=core`, bpf-linker) so that `cargo build` alone
//! produces a `blocker` with the BPF object embedded; `src/loader.rs` includes it from `OUT_DIR`.
//!
//! This does what aya-build does, plus `-C target-cpu=$BPF_CPU` (default v3), which aya-build
//! 0.2.0 cannot pass because it replaces `CARGO_ENCODED_RUSTFLAGS`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const BPF_CRATE: &str = "cgroup-connect-ebpf";
const BPF_BIN: &str = "cgroup-connect";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    for var in ["BPF_CPU", "BPF_TOOLCHAIN", "CGROUP_CONNECT_SKIP_EBPF"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let crate_dir = manifest_dir.parent().context("crate has no parent")?.join(BPF_CRATE);
    let common_dir =
        manifest_dir.parent().context("crate has no parent")?.join("cgroup-connect-common");
    for dir in [&crate_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    emit_version(&manifest_dir);
    let object = out_dir.join(BPF_BIN);
    if env::var_os("CGROUP_CONNECT_SKIP_EBPF").is_some() {
        // For tools that only read the source (clippy, docs): an empty object that never loads.
        std::fs::write(&object, []).context("writing placeholder BPF object")?;
        return Ok(());
    }
    build_bpf(&crate_dir, &out_dir.join("bpf-target"), &object)
}

/// Sets `BLOCKER_VERSION` (`--version`): the crate version and the git commit it was built
/// from (HEAD; uncommitted changes are not marked, since they would not rerun this script).
/// From a tree without git (a source tarball) the commit is `CGROUP_CONNECT_COMMIT` if set, else
/// "unknown".
fn emit_version(manifest_dir: &Path) {
    println!("cargo:rerun-if-env-changed=CGROUP_CONNECT_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            // A new commit, a checkout or a branch that moves: HEAD, the ref, packed refs.
            for file in ["HEAD", "packed-refs"] {
                if let Some(path) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", file])
                {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(path) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", &head])
            {
                println!("cargo:rerun-if-changed={path}");
            }
            commit
        }
        None => env::var("CGROUP_CONNECT_COMMIT").unwrap_or_else(|_| "unknown".to_owned()),
    };
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=BLOCKER_VERSION={version} (commit {commit})");
}

fn build_bpf(crate_dir: &Path, target_dir: &Path, object: &Path) -> anyhow::Result<()> {
    let cpu = env::var("BPF_CPU").unwrap_or_else(|_| "v3".to_owned());
    let toolchain = env::var("BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_owned());
    let rustflags = [
        format!(
            "--cfg=bpf_target_arch=\"{}\"",
            env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
        ),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        format!("-Ctarget-cpu={cpu}"),
    ]
    .join("\x1f");
    let status = Command::new("rustup")
        .args(["run", &toolchain, "cargo", "build", "--package", BPF_CRATE, "--bins", "--release"])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(target_dir)
        .current_dir(crate_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .status()
        .context(
            "running `rustup run nightly cargo`: is rustup installed? run ./scripts/setup.sh",
        )?;
    if !status.success() {
        bail!(
            "building the BPF programs failed ({status}): run ./scripts/setup.sh \
             (nightly with rust-src, bpf-linker)"
        );
    }
    let built = target_dir.join(TARGET).join("release").join(BPF_BIN);
    std::fs::copy(&built, object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
