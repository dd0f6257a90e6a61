//! Generates the gRPC client and server code for `vidx.v1` from `proto/vidx/v1/vidx.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/vidx/v1/vidx.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Connections are made by `vidx_core::client`, not by generated `connect` helpers.
        .build_transport(false)
        .compile_protos(&["proto/vidx/v1/vidx.proto"], &["proto"])?;
    Ok(())
}
