//! The `concierge` binary takes the flags every meshrpc node shares.

use std::process::Command;

#[test]
fn the_binary_documents_the_shared_mesh_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_concierge"))
        .arg("--help")
        .output()
        .expect("the concierge binary runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--nodes",
        "MESHRPC_CLUSTER_NODES",
        "--cluster",
        "--listen",
        "--ca",
        "--admin",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from:\n{help}");
    }
}

#[test]
fn a_malformed_listen_address_is_refused_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_concierge"))
        .args(["--listen", "not-an-address"])
        .output()
        .expect("the concierge binary runs");
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("--listen"), "{error}");
}
