//! Builds the eBPF programs (crate `gateway-ebpf`) with the nightly toolchain and bpf-linker, and
//! leaves the object in OUT_DIR, where `src/ebpf/loader.rs` embeds it. `cargo xtask setup` installs
//! what this needs.

fn main() -> anyhow::Result<()> {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow::anyhow!("gateway-user has no parent directory"))?
        .join("gateway-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    println!("cargo:rerun-if-changed={ebpf_dir}/src");
    println!("cargo:rerun-if-changed=../gateway-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
