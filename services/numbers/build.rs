fn main() -> Result<(), meshrpc_build::Error> {
    meshrpc_build::compile("services.toml")
}
