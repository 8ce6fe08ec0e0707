//! Compiles the protos under `proto/` with protox (pure Rust, no protoc) and
//! writes the file descriptor set used for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/authzed/api/v1/core.proto",
        "proto/authzed/api/v1/debug.proto",
        "proto/authzed/api/v1/error_reason.proto",
        "proto/authzed/api/v1/permission_service.proto",
        "proto/authzed/api/v1/schema_service.proto",
        "proto/authzed/api/v1/watch_service.proto",
        "proto/google/rpc/status.proto",
        "proto/google/rpc/error_details.proto",
        "proto/kinbar/v1/audit_service.proto",
        "proto/kinbar/v1/admin_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::api::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
