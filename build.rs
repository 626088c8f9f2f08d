//! Compiles the resource protos and our service with protox (pure Rust, so no system `protoc` is
//! needed): messages with prost, the gRPC servers with tonic, and the descriptor set server reflection
//! serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/ai/stigmer/commons/v1/types.proto",
        "proto/ai/stigmer/agentic/agentexecution/v1/api.proto",
        "proto/ai/stigmer/agentic/workflowexecution/v1/api.proto",
        "proto/ai/stigmer/handshake/v1/handshake.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .include_file("protos.rs")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
