//! Compiles `sluice/v1/*.proto` with protox (a .proto compiler written in
//! Rust), so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["sluice/v1/sluice.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;

    // compile_fds neither writes the descriptor set (needed by gRPC
    // reflection) nor tells cargo when to rerun, so do both here.
    std::fs::write(out_dir.join("sluice_descriptor.bin"), fds.encode_to_vec())?;
    println!("cargo:rerun-if-changed=sluice");

    tonic_prost_build::configure()
        .bytes(".sluice.v1")
        .compile_fds(fds)?;
    Ok(())
}
