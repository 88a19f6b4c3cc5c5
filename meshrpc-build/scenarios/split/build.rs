fn main() -> Result<(), meshrpc_build::Error> {
    // This crate calls `calc` and serves `store`: generate only the half each one needs.
    meshrpc_build::configure()
        .build_server(false)
        .service("calc")
        .compile("services.toml")?;
    meshrpc_build::configure()
        .build_client(false)
        .service("store")
        .compile("services.toml")
}
