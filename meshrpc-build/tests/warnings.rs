//! Things that build but are likely mistakes come back as located warnings: `generate` returns
//! them with each file, and `compile` prints them as `cargo:warning=` lines.

use meshrpc_build::{Options, generate};

fn warnings_of(manifest: &str) -> Vec<String> {
    let files = generate(manifest, "services.toml", &Options::default()).expect("valid manifest");
    files.into_iter().flat_map(|file| file.warnings).collect()
}

#[test]
fn an_unused_declared_type_and_use_entry_are_located_warnings() {
    let manifest = "[inventory]\nuse = [\"crate::model::Tag\", \"crate::model::Old\"]\n\n\
                    [inventory.methods]\nget = { fn = \"get(id: ItemId) -> Tag\" }\n\n\
                    [inventory.types.ItemId]\nnewtype = \"u64\"\n\n\
                    [inventory.types.Leftover]\nstruct = \"x: u8\"\n";
    assert_eq!(
        warnings_of(manifest),
        [
            "services.toml:10:18: type `Leftover` of service `inventory` is declared but \
             no method uses it — use it in a signature (or in a type a signature uses), or remove \
             its table",
            "services.toml:2:29: `use` entry `crate::model::Old` of service `inventory` \
             is not used by any method — write `Old` in a signature or a declared type, or remove \
             the entry",
        ]
    );
}

#[test]
fn types_reached_through_other_types_are_used() {
    let manifest = "[inventory]\nuse = [\"crate::model::Tag\"]\n\n\
                    [inventory.methods]\nget = { fn = \"get() -> Option<Item>\" }\n\n\
                    [inventory.types.Item]\nstruct = \"id: ItemId, tags: Vec<Tag>, next: Option<Box<Item>>\"\n\n\
                    [inventory.types.ItemId]\nnewtype = \"u64\"\n";
    assert_eq!(warnings_of(manifest), Vec::<String>::new());
}

/// `compile` prints each warning as a `cargo:warning=` line on stdout, where cargo picks it up.
/// The test runs itself again as a child process to read that stdout.
#[test]
fn compile_prints_each_warning_for_cargo() {
    const CHILD: &str = "MESHRPC_BUILD_WARNINGS_CHILD";
    if let Some(dir) = std::env::var_os(CHILD) {
        let dir = std::path::PathBuf::from(dir);
        let manifest = dir.join("services.toml");
        std::fs::write(
            &manifest,
            "[s.methods]\nf = \"f()\"\n\n[s.types.Leftover]\nstruct = \"x: u8\"\n",
        )
        .expect("writes the manifest");
        meshrpc_build::configure()
            .out_dir(&dir)
            .emit_rerun_if_changed(false)
            .compile(&manifest)
            .expect("compiles");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "compile_prints_each_warning_for_cargo",
            "--nocapture",
        ])
        .env(CHILD, dir.path())
        .output()
        .expect("the child runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "cargo:warning={}:4:10: type `Leftover` of service `s` is declared but no method uses it",
        dir.path().join("services.toml").display()
    );
    assert!(
        stdout.lines().any(|line| line.starts_with(&expected)),
        "{stdout}"
    );
    assert!(dir.path().join("s.rs").exists());
}
