//! Generates the meshrpc `echo` service from `services.toml`, and the tonic service (`echo`,
//! `relay` and the server-streaming `produce`) for the
//! gRPC baselines without `protoc`: its messages are hand-written prost structs
//! (`src/systems/tonic_grpc.rs`) and the stubs come from `tonic_build::manual` with
//! tonic-prost's codec.

fn main() -> Result<(), meshrpc_build::Error> {
    meshrpc_build::compile("services.toml")?;

    let method = |name: &str, route: &str, input: &str, output: &str| {
        let builder = tonic_build::manual::Method::builder();
        // `produce` answers a stream (the streaming scenario); the others one message.
        let builder = if name == "produce" {
            builder.server_streaming()
        } else {
            builder
        };
        builder
            .name(name)
            .route_name(route)
            .input_type(format!("crate::systems::tonic_grpc::{input}"))
            .output_type(format!("crate::systems::tonic_grpc::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let service = tonic_build::manual::Service::builder()
        .name("Bench")
        .package("bench")
        .method(method("echo", "Echo", "EchoRequest", "EchoReply"))
        .method(method("relay", "Relay", "RelayRequest", "RelayReply"))
        .method(method(
            "produce",
            "Produce",
            "ProduceRequest",
            "ProduceReply",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
    println!("cargo::rerun-if-changed=build.rs");
    Ok(())
}
