//! Generates the tonic service for the gRPC baselines without `protoc`: the messages are
//! hand-written prost structs (`src/systems/tonic_grpc.rs`) and the service stubs come from
//! `tonic_build::manual` with tonic-prost's codec.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
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
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
    println!("cargo::rerun-if-changed=build.rs");
}
