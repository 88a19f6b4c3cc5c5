//! Generates the complete example of `docs/MANIFEST.md` from the document itself, so the
//! example cannot drift from what compiles.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reference = "../../../docs/MANIFEST.md";
    println!("cargo:rerun-if-changed={reference}");
    let text = std::fs::read_to_string(reference)?;
    let example = text
        .split("## A complete example")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .ok_or("docs/MANIFEST.md has no toml block under \"## A complete example\"")?;
    let manifest = PathBuf::from(std::env::var("OUT_DIR")?).join("services.toml");
    std::fs::write(&manifest, example)?;
    meshrpc_build::configure()
        .emit_rerun_if_changed(false)
        .compile(&manifest)?;
    Ok(())
}
