//! Compiles `sluice/v1/*.proto` (the API) and `sluice/cluster/v1/*.proto`
//! (between members) with protox (a .proto compiler written in
//! Rust), so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["sluice/v1/sluice.proto", "sluice/cluster/v1/cluster.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;

    // compile_fds neither writes the descriptor sets (needed by gRPC
    // reflection) nor tells cargo when to rerun, so do both here. One set
    // per API, so that a broker lists the cluster's service only when it
    // serves it.
    for (proto, bin) in [
        ("sluice/v1/sluice.proto", "sluice_descriptor.bin"),
        ("sluice/cluster/v1/cluster.proto", "cluster_descriptor.bin"),
    ] {
        let one = protox::compile([proto], ["."])?;
        std::fs::write(out_dir.join(bin), one.encode_to_vec())?;
    }
    println!("cargo:rerun-if-changed=sluice");

    tonic_prost_build::configure()
        .bytes(".sluice.v1")
        .bytes(".sluice.cluster.v1")
        .compile_fds(fds)?;
    Ok(())
}
