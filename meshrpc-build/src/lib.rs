#![warn(missing_docs)]
//! Build-time code generator for meshrpc: turns a `services.toml` manifest into a trait, wire
//! messages, a server and a client per service.
//!
//! In `build.rs`:
//! ```no_run
//! fn main() -> Result<(), meshrpc_build::Error> {
//!     meshrpc_build::compile("services.toml")
//! }
//! ```
//! or, with options:
//! ```no_run
//! # fn main() -> Result<(), meshrpc_build::Error> {
//! meshrpc_build::configure()
//!     .build_server(false) // a crate that only calls the service
//!     .service("greeter")
//!     .compile("services.toml")
//! # }
//! ```
//! and in the crate: `meshrpc::include_services!("greeter");`, which includes
//! `$OUT_DIR/greeter.rs`.
//!
//! The manifest format, every generated item and the service descriptor are documented in
//! `docs/MANIFEST.md`. Every mistake in a manifest fails the build with one line,
//! `path/services.toml:LINE:COL: <what is wrong> — <what to write instead>`, before any code is
//! generated.

use std::path::{Path, PathBuf};

mod descriptor;
mod emit;
mod error;
mod manifest;
mod types;

pub use error::Error;

use error::Source;

/// What to generate; [`Options::default`] generates clients and servers of every service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Generate the client type (`GreeterClient`).
    pub build_client: bool,
    /// Generate the server type (`GreeterServer`).
    pub build_server: bool,
    /// Generate only these services (all when empty).
    pub services: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            build_client: true,
            build_server: true,
            services: Vec::new(),
        }
    }
}

/// The generated code of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// The service's name, e.g. `greeter`.
    pub service: String,
    /// The file name in `OUT_DIR`, e.g. `greeter.rs`.
    pub file_name: String,
    /// The formatted Rust code.
    pub code: String,
    /// Located warnings about the service's part of the manifest, one line each
    /// (`services.toml:LINE:COL: <what> — <what to do>`): things that build but are
    /// likely mistakes, such as a declared type or a `use` entry that no method uses.
    /// [`compile`] prints them as `cargo:warning=` lines.
    pub warnings: Vec<String>,
}

/// Generates the code of every service of a manifest, without touching the file system.
///
/// `manifest_path` is used in error messages and in the generated header comment.
///
/// ```
/// let manifest = r#"
/// [greeter.methods]
/// greet = { fn = "greet(name: String) -> String", returns = "message" }
/// "#;
/// let files = meshrpc_build::generate(manifest, "services.toml", &Default::default()).unwrap();
/// assert_eq!(files[0].file_name, "greeter.rs");
/// assert!(files[0].code.contains("pub trait Greeter"));
///
/// let error = meshrpc_build::generate("[greeter]\ndoc = 1\n", "services.toml", &Default::default())
///     .unwrap_err();
/// assert!(error.to_string().starts_with("services.toml:2:7: `doc` must be a string"));
/// ```
pub fn generate(
    manifest_text: &str,
    manifest_path: &str,
    options: &Options,
) -> Result<Vec<GeneratedFile>, Error> {
    generate_files(manifest_text, manifest_path, manifest_path, options)
}

/// [`generate`], naming the manifest `error_path` in errors and `header_path` in the header.
fn generate_files(
    manifest_text: &str,
    error_path: &str,
    header_path: &str,
    options: &Options,
) -> Result<Vec<GeneratedFile>, Error> {
    let manifest_path = error_path;
    let source = Source {
        path: manifest_path,
        text: manifest_text,
    };
    let manifest = manifest::parse(source)?;
    for wanted in &options.services {
        if !manifest
            .services
            .iter()
            .any(|service| &service.name == wanted)
        {
            let known: Vec<&str> = manifest
                .services
                .iter()
                .map(|service| service.name.as_str())
                .collect();
            return Err(Error::Config(format!(
                "{manifest_path}: no service `{wanted}` in the manifest — it defines: {}",
                known.join(", ")
            )));
        }
    }
    let parts = emit::Parts {
        client: options.build_client,
        server: options.build_server,
    };
    Ok(manifest
        .services
        .iter()
        .filter(|service| options.services.is_empty() || options.services.contains(&service.name))
        .map(|service| GeneratedFile {
            service: service.name.clone(),
            file_name: format!("{}.rs", service.name),
            code: emit::service_file(service, header_path, parts),
            warnings: service.warnings.clone(),
        })
        .collect())
}

/// Generates every service of the manifest at `manifest` into `$OUT_DIR`, with default options.
/// Call it from `build.rs`.
pub fn compile(manifest: impl AsRef<Path>) -> Result<(), Error> {
    configure().compile(manifest)
}

/// A [`Builder`] with default options: clients and servers of every service, into `$OUT_DIR`.
pub fn configure() -> Builder {
    Builder {
        options: Options::default(),
        out_dir: None,
        emit_rerun_if_changed: true,
    }
}

/// Options for [`compile`]; start with [`configure`].
#[derive(Debug, Clone)]
pub struct Builder {
    options: Options,
    out_dir: Option<PathBuf>,
    emit_rerun_if_changed: bool,
}

impl Builder {
    /// Writes the generated files here instead of `$OUT_DIR`.
    pub fn out_dir(mut self, out_dir: impl Into<PathBuf>) -> Builder {
        self.out_dir = Some(out_dir.into());
        self
    }

    /// Whether to generate client types (default `true`).
    pub fn build_client(mut self, enable: bool) -> Builder {
        self.options.build_client = enable;
        self
    }

    /// Whether to generate server types (default `true`).
    pub fn build_server(mut self, enable: bool) -> Builder {
        self.options.build_server = enable;
        self
    }

    /// Generates this service; call it once per service. Without it, every service is generated.
    pub fn service(mut self, name: impl Into<String>) -> Builder {
        self.options.services.push(name.into());
        self
    }

    /// Whether to print `cargo:rerun-if-changed=<manifest>` (default `true`), so the build
    /// script reruns exactly when the manifest changes.
    pub fn emit_rerun_if_changed(mut self, enable: bool) -> Builder {
        self.emit_rerun_if_changed = enable;
        self
    }

    /// Reads the manifest, checks it and writes one `<service>.rs` per service.
    pub fn compile(self, manifest: impl AsRef<Path>) -> Result<(), Error> {
        let manifest = manifest.as_ref();
        if self.emit_rerun_if_changed {
            println!("cargo:rerun-if-changed={}", manifest.display());
        }
        let text = std::fs::read_to_string(manifest).map_err(|source| Error::Read {
            path: manifest.to_owned(),
            source,
        })?;
        // Errors name the manifest by a path editors can open from the build output.
        let shown = match std::env::var_os("CARGO_MANIFEST_DIR") {
            Some(dir) if manifest.is_relative() => Path::new(&dir).join(manifest),
            _ => manifest.to_owned(),
        };
        // The header names the manifest as given, so generated code does not depend on where
        // the workspace is checked out.
        let files = generate_files(
            &text,
            &shown.display().to_string(),
            &manifest.display().to_string(),
            &self.options,
        )?;
        let out_dir = match self.out_dir {
            Some(out_dir) => out_dir,
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    Error::Config(
                        "OUT_DIR is not set — call meshrpc_build::compile from build.rs, or set \
                     configure().out_dir(..)"
                            .to_owned(),
                    )
                })?,
        };
        for file in files {
            for warning in &file.warnings {
                println!("cargo:warning={warning}");
            }
            let path = out_dir.join(&file.file_name);
            // Rewriting an unchanged file would only make cargo rebuild the crate.
            if std::fs::read_to_string(&path).ok().as_deref() == Some(file.code.as_str()) {
                continue;
            }
            std::fs::write(&path, &file.code).map_err(|source| Error::Write { path, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_streams;
