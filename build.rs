//! Compiles `proto/` with a vendored `protoc`, so a build needs only the Rust toolchain.
//! `$PROTOC` still wins when set, for distributions that ship their own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tokend_descriptor.bin"))
        .compile_with_config(config, &["proto/tokend/v1/tokend.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
