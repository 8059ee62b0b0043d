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
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tokend_descriptor.bin"))
        .compile_with_config(config, &["proto/tokend/v1/tokend.proto"], &["proto"])?;
    // The daemon's side of the same service, in `server/`: its `Token` answers are tokend's own
    // type, which writes the message from the store without building a `proto::Token` (and
    // freeing its copies) per call (src/serve/wire.rs); every other message is the generated one.
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_dir)
        .extern_path(".tokend.v1.Token", "crate::serve::wire::TokenMessage")
        .extern_path(".tokend.v1", "crate::proto")
        .compile_with_config(config, &["proto/tokend/v1/tokend.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
