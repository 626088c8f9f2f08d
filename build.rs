//! Compiles the resource protos with protox (pure Rust, so no system `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/ai/stigmer/commons/v1/types.proto",
        "proto/ai/stigmer/agentic/agentexecution/v1/api.proto",
        "proto/ai/stigmer/agentic/workflowexecution/v1/api.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().include_file("protos.rs").compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
