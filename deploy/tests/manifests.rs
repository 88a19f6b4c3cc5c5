//! Checks of the deployment files: each manifest parses, the files agree with each other (ports,
//! labels, paths, timeouts), and every flag and environment variable they use is one the
//! binaries accept, read from the sources that declare them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const DOCKERFILE: &str = include_str!("../Dockerfile");
const DOCKERIGNORE: &str = include_str!("../Dockerfile.dockerignore");
const COMPOSE: &str = include_str!("../docker-compose.yml");
const KUSTOMIZATION: &str = include_str!("../kubernetes/kustomization.yaml");
const KUBERNETES: [(&str, &str); 4] = [
    (
        "seeds-service.yaml",
        include_str!("../kubernetes/seeds-service.yaml"),
    ),
    ("greeter.yaml", include_str!("../kubernetes/greeter.yaml")),
    (
        "concierge.yaml",
        include_str!("../kubernetes/concierge.yaml"),
    ),
    ("mesh-api.yaml", include_str!("../kubernetes/mesh-api.yaml")),
];

/// Where the flags and environment variables are declared.
const NODE_FLAGS: &str = include_str!("../../meshrpc/src/cli.rs");
const GATEWAY_FLAGS: &str = include_str!("../../gateway/src/config.rs");
const SEEDS: &str = include_str!("../../meshrpc/src/seeds.rs");
const METRICS: &str = include_str!("../../meshrpc/src/metrics.rs");
const ROOT_MANIFEST: &str = include_str!("../../Cargo.toml");
const BINARY_MANIFESTS: [&str; 3] = [
    include_str!("../../gateway/Cargo.toml"),
    include_str!("../../services/greeter/Cargo.toml"),
    include_str!("../../services/concierge/Cargo.toml"),
];
const OPERATIONS: &str = include_str!("../../docs/OPERATIONS.md");

/// Variables the manifests may set that no meshrpc flag declares.
const OTHER_ENV: [&str; 2] = [
    "RUST_LOG", // read by meshrpc::cli::init_logging
    "POD_IP",   // the Kubernetes downward API, only to build MESHRPC_ADVERTISE_ADDR
];

// ---------------------------------------------------------------------------------------------
// Reading the files

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents(text: &str, what: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap_or_else(|error| panic!("{what}: {error}"))
}

fn text<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {yaml:?}"))
}

fn list<'a>(yaml: &'a Yaml, what: &str) -> &'a [Yaml] {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {yaml:?}"))
}

fn integer(yaml: &Yaml, what: &str) -> i64 {
    yaml.as_i64()
        .unwrap_or_else(|| panic!("{what}: expected an integer, found {yaml:?}"))
}

fn strings(yaml: &Yaml, what: &str) -> Vec<String> {
    list(yaml, what)
        .iter()
        .map(|item| text(item, what).to_owned())
        .collect()
}

/// A mapping of strings (labels, selectors, compose `environment:` as a map or `K=V` list).
fn string_map(yaml: &Yaml, what: &str) -> BTreeMap<String, String> {
    match yaml {
        Yaml::Hash(hash) => hash
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    Yaml::String(s) => s.clone(),
                    other => panic!("{what}: quote the value of {key:?}, found {other:?}"),
                };
                (text(key, what).to_owned(), value)
            })
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let (key, value) = text(item, what)
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{what}: `{item:?}` is not KEY=VALUE"));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        other => panic!("{what}: expected a mapping, found {other:?}"),
    }
}

/// The environment of one container; indexing a variable that is not set names it.
struct Env {
    of: String,
    vars: BTreeMap<String, String>,
}

impl std::ops::Index<&str> for Env {
    type Output = String;

    fn index(&self, var: &str) -> &String {
        self.vars
            .get(var)
            .unwrap_or_else(|| panic!("{}: {var} is not set", self.of))
    }
}

impl Env {
    fn get(&self, var: &str) -> Option<&String> {
        self.vars.get(var)
    }

    fn contains_key(&self, var: &str) -> bool {
        self.vars.contains_key(var)
    }
}

fn port_of(addr: &str, what: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{what}: `{addr}` has no port"))
}

fn seconds(value: &str, what: &str) -> f64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("{what}: `{value}` is not a number of seconds"))
}

/// A compose duration such as `25s` or `1m30s`.
fn compose_duration(value: &str, what: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    for c in value.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'h' | 'm' | 's' => {
                let unit = match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                total += seconds(&number, what) * unit;
                number.clear();
            }
            _ => panic!("{what}: `{value}` is not a duration like `25s`"),
        }
    }
    assert!(number.is_empty(), "{what}: `{value}` lacks a unit");
    total
}

/// A Kubernetes memory quantity in bytes (`32Mi`, `1Gi`, `64M`).
fn memory_bytes(quantity: &str, what: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            let number: u64 = number
                .parse()
                .unwrap_or_else(|_| panic!("{what}: bad quantity `{quantity}`"));
            return number * factor;
        }
    }
    quantity
        .parse()
        .unwrap_or_else(|_| panic!("{what}: bad quantity `{quantity}`"))
}

// ---------------------------------------------------------------------------------------------
// What the binaries accept

/// Every `env = "..."` declared by the node's and the gateway's flags.
fn declared_env() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for source in [NODE_FLAGS, GATEWAY_FLAGS] {
        for piece in source.split("env = \"").skip(1) {
            if let Some((name, _)) = piece.split_once('"') {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.contains("MESHRPC_CLUSTER_NODES") && names.contains("MESHRPC_HTTP_ADDR"),
        "the flag sources no longer declare env vars as `env = \"...\"`: {names:?}"
    );
    names
}

/// Every long flag (`--name`) declared with clap's derive in the node's and gateway's flags.
fn declared_flags() -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for source in [NODE_FLAGS, GATEWAY_FLAGS] {
        for piece in source.split("#[arg(").skip(1) {
            let Some((attribute, rest)) = piece.split_once(")]") else {
                continue;
            };
            let field = rest
                .lines()
                .map(str::trim)
                .find_map(|line| line.strip_prefix("pub "))
                .and_then(|line| line.split_once(':'))
                .map(|(name, _)| name.trim().to_owned());
            if let Some((_, named)) = attribute.split_once("long = \"") {
                if let Some((name, _)) = named.split_once('"') {
                    flags.insert(format!("--{name}"));
                }
            } else if attribute
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .any(|word| word == "long")
            {
                if let Some(field) = field {
                    flags.insert(format!("--{}", field.replace('_', "-")));
                }
            }
        }
    }
    assert!(
        flags.contains("--nodes") && flags.contains("--require") && flags.contains("--api-key"),
        "could not read the flags from the sources: {flags:?}"
    );
    flags
}

/// The binaries the workspace builds for deployment, from their `[[bin]]` sections.
fn binaries() -> BTreeSet<String> {
    BINARY_MANIFESTS
        .iter()
        .flat_map(|manifest| manifest.split("[[bin]]").skip(1))
        .filter_map(|section| {
            let (_, rest) = section.split_once("name = \"")?;
            rest.split_once('"').map(|(name, _)| name.to_owned())
        })
        .collect()
}

fn workspace_members() -> Vec<String> {
    let (_, rest) = ROOT_MANIFEST
        .split_once("members = [")
        .expect("the root Cargo.toml lists members");
    let (members, _) = rest.split_once(']').expect("members list ends");
    members
        .split(',')
        .map(|entry| entry.trim().trim_matches('"').to_owned())
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// A constant `NAME ... = <number>` in `source`, e.g. the default seed port.
fn constant_number(source: &str, name: &str) -> u64 {
    let (_, rest) = source
        .split_once(name)
        .unwrap_or_else(|| panic!("`{name}` is not declared any more"));
    let digits: String = rest
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '_')
        .filter(|c| *c != '_')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("`{name}` has no number"))
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

#[derive(Debug)]
struct Instruction {
    keyword: String,
    arguments: String,
}

#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

/// The Dockerfile's stages, with line continuations joined, comments dropped and `ARG`
/// defaults declared before the first `FROM` substituted into the `FROM` lines.
fn dockerfile_stages() -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in DOCKERFILE.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical.iter().filter(|line| !line.is_empty()) {
        let (keyword, arguments) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let arguments = arguments.trim().to_owned();
        if keyword == "ARG" && stages.is_empty() {
            if let Some((name, value)) = arguments.split_once('=') {
                args.insert(format!("${{{name}}}"), value.to_owned());
            }
        } else if keyword == "FROM" {
            let mut words = arguments.split_whitespace();
            let mut image = words.next().expect("FROM names an image").to_owned();
            for (name, value) in &args {
                image = image.replace(name.as_str(), value);
            }
            let name = match (words.next(), words.next()) {
                (Some(r#as), Some(name)) if r#as.eq_ignore_ascii_case("as") => {
                    Some(name.to_owned())
                }
                _ => None,
            };
            stages.push(Stage {
                image,
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before the first FROM")
                .instructions
                .push(Instruction { keyword, arguments });
        }
    }
    stages
}

fn instructions<'a>(stage: &'a Stage, keyword: &'a str) -> impl Iterator<Item = &'a str> {
    stage
        .instructions
        .iter()
        .filter(move |instruction| instruction.keyword == keyword)
        .map(|instruction| instruction.arguments.as_str())
}

#[test]
fn dockerfile_builds_the_three_binaries_and_runs_them_unprivileged() {
    let stages = dockerfile_stages();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage: {stages:?}");
    let (builder, runtime) = (&stages[0], &stages[1]);
    assert_eq!(builder.image, "rust:1.95-slim-bookworm");
    assert_eq!(builder.name.as_deref(), Some("builder"));
    assert_eq!(runtime.image, "debian:bookworm-slim");

    let build = instructions(builder, "RUN")
        .find(|run| run.contains("cargo build"))
        .expect("the builder runs cargo build");
    for needed in [
        "--release",
        "--locked",
        "-p gateway",
        "-p greeter",
        "-p concierge",
        "--mount=type=cache,target=/usr/local/cargo/registry",
    ] {
        assert!(
            build.contains(needed),
            "cargo build lacks `{needed}`: {build}"
        );
    }

    let binaries = binaries();
    assert_eq!(
        binaries,
        ["concierge", "greeter", "mesh-api"]
            .map(String::from)
            .into(),
        "the [[bin]] names changed"
    );
    let copies: Vec<&str> = instructions(runtime, "COPY").collect();
    for binary in &binaries {
        assert!(
            build.contains(&format!("target/release/{binary}")),
            "the builder does not take `{binary}` out of target/release"
        );
        assert!(
            copies.iter().any(|copy| copy.starts_with("--from=builder")
                && copy.ends_with(&format!("/usr/local/bin/{binary}"))),
            "the runtime stage does not COPY `{binary}` from the builder: {copies:?}"
        );
    }
    assert!(
        copies
            .iter()
            .any(|copy| copy.contains("deploy/meshrpc-probe /usr/local/bin/meshrpc-probe")),
        "the compose health check needs meshrpc-probe in the image"
    );

    assert!(
        instructions(runtime, "RUN").any(|run| run.contains("ca-certificates")),
        "the runtime installs ca-certificates"
    );
    let users: Vec<&str> = instructions(runtime, "USER").collect();
    let user = users.last().expect("the runtime sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER must be a numeric non-root uid (runAsNonRoot can verify only numbers): {user}"
    );

    let exposed: BTreeSet<&str> = instructions(runtime, "EXPOSE")
        .flat_map(str::split_whitespace)
        .collect();
    let mesh = constant_number(SEEDS, "DEFAULT_PORT: u16 =");
    let http = constant_number(GATEWAY_FLAGS, "Ipv4Addr::UNSPECIFIED),");
    let expected: BTreeSet<String> = [
        format!("{mesh}/udp"),
        format!("{http}/tcp"),
        "9090/tcp".to_owned(),
    ]
    .into();
    assert_eq!(
        exposed,
        expected.iter().map(String::as_str).collect(),
        "EXPOSE the mesh port (UDP), the gateway's HTTP port and the admin port"
    );

    assert_eq!(
        instructions(runtime, "ENTRYPOINT").count(),
        0,
        "no ENTRYPOINT: the command names the binary"
    );
    let cmd = instructions(runtime, "CMD").last().expect("a default CMD");
    assert!(
        binaries
            .iter()
            .any(|binary| cmd.contains(&format!("\"{binary}\""))),
        "the default CMD runs one of the binaries: {cmd}"
    );
}

#[test]
fn dockerfile_env_names_flags_the_binaries_accept() {
    let declared = declared_env();
    let stages = dockerfile_stages();
    let env: Vec<&str> = instructions(&stages[1], "ENV")
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!env.is_empty());
    for pair in env {
        let (name, value) = pair.split_once('=').expect("ENV NAME=VALUE");
        assert!(
            declared.contains(name) || OTHER_ENV.contains(&name) || name == "HOME",
            "ENV {name} is read by no binary"
        );
        if name.ends_with("_ADDR") {
            value
                .parse::<std::net::SocketAddr>()
                .unwrap_or_else(|_| panic!("ENV {name}={value} is not an address"));
        }
    }
}

#[test]
fn the_build_context_keeps_the_workspace_and_drops_build_output() {
    let ignored: BTreeSet<&str> = DOCKERIGNORE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    for needed in ["target", ".git"] {
        assert!(
            ignored.contains(needed),
            "the context should leave out {needed}"
        );
    }
    // Cargo loads every workspace member, so none may be left out of the context.
    let mut kept = workspace_members();
    kept.extend(["Cargo.toml", "Cargo.lock", "deploy/meshrpc-probe"].map(String::from));
    for path in &kept {
        for pattern in &ignored {
            let pattern = pattern.trim_start_matches("**/");
            assert!(
                !(path == pattern || path.starts_with(&format!("{pattern}/"))),
                "the context must keep `{path}` but `{pattern}` leaves it out"
            );
        }
        assert!(
            deploy_dir().join("..").join(path).exists(),
            "`{path}` does not exist"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

fn compose() -> Yaml {
    documents(COMPOSE, "docker-compose.yml")
        .into_iter()
        .next()
        .expect("docker-compose.yml holds a document")
}

fn compose_services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose["services"]
        .as_hash()
        .expect("services")
        .iter()
        .map(|(name, service)| (text(name, "service name").to_owned(), service.clone()))
        .collect()
}

fn compose_env(service: &Yaml, name: &str) -> Env {
    Env {
        of: name.to_owned(),
        vars: string_map(&service["environment"], &format!("{name}.environment")),
    }
}

#[test]
fn compose_runs_the_original_stack_from_one_image() {
    let compose = compose();
    let services = compose_services(&compose);
    assert_eq!(
        services.keys().map(String::as_str).collect::<Vec<_>>(),
        ["concierge", "greeter", "mesh-api"]
    );
    let binaries = binaries();
    let image = text(&services["mesh-api"]["image"], "image");
    for (name, service) in &services {
        assert_eq!(text(&service["image"], name), image, "{name}: one image");
        let build = &service["build"];
        assert_eq!(text(&build["context"], name), "..");
        let dockerfile = text(&build["dockerfile"], name);
        assert!(
            deploy_dir().join("..").join(dockerfile).is_file(),
            "{name}: no {dockerfile}"
        );
        let command = strings(&service["command"], name);
        assert!(
            binaries.contains(&command[0]),
            "{name}: `{}` is not a binary of the image",
            command[0]
        );
        assert_eq!(command[0], *name, "{name}: the service runs its own binary");

        let env = compose_env(service, name);
        assert_eq!(env["MESHRPC_CLUSTER_NODES"], "mesh-api,greeter", "{name}");
        for seed in env["MESHRPC_CLUSTER_NODES"].split(',') {
            assert!(
                services.contains_key(seed),
                "{name}: seed `{seed}` is not a compose service, so it resolves to nothing"
            );
        }
        assert_eq!(env["MESHRPC_CLUSTER_NAME"], "default", "{name}");
        let mesh = constant_number(SEEDS, "DEFAULT_PORT: u16 =");
        assert_eq!(
            u64::from(port_of(&env["MESHRPC_LISTEN_ADDR"], name)),
            mesh,
            "{name}: seeds are named without a port, so every node listens on the default"
        );
        assert_eq!(strings(&service["networks"], name), ["meshnet"]);
        assert_eq!(
            text(&service["deploy"]["restart_policy"]["condition"], name),
            "on-failure"
        );
    }
    let gateway = strings(&services["mesh-api"]["command"], "mesh-api");
    assert!(
        gateway
            .windows(2)
            .any(|pair| pair == ["--require", "greeter"]),
        "the gateway waits for the greeter: {gateway:?}"
    );
}

#[test]
fn compose_publishes_only_the_gateway_http_port_and_scales_the_greeter() {
    let compose = compose();
    let services = compose_services(&compose);
    let gateway = &services["mesh-api"];
    let http = port_of(
        &compose_env(gateway, "mesh-api")["MESHRPC_HTTP_ADDR"],
        "mesh-api",
    );
    assert_eq!(http, 8282);
    assert_eq!(
        strings(&gateway["ports"], "mesh-api.ports"),
        [format!("{http}:{http}")]
    );
    for (name, service) in &services {
        if name != "mesh-api" {
            assert!(service["ports"].is_badvalue(), "{name} publishes no port");
        }
        assert!(
            service["expose"].is_badvalue(),
            "{name}: nothing beyond the compose network"
        );
    }
    let greeter = &services["greeter"];
    assert!(
        greeter["container_name"].is_badvalue(),
        "a fixed container_name would stop `--scale greeter=5`"
    );
    assert!(integer(&greeter["deploy"]["replicas"], "greeter replicas") >= 2);
}

#[test]
fn compose_health_checks_ask_readiness_on_the_configured_ports() {
    let compose = compose();
    for (name, service) in compose_services(&compose) {
        let env = compose_env(&service, &name);
        let admin = port_of(&env["MESHRPC_ADMIN_ADDR"], &name);
        let test = strings(&service["healthcheck"]["test"], &name);
        assert_eq!(test[..3], ["CMD", "meshrpc-probe", "/readyz"], "{name}");
        // Without a port argument, meshrpc-probe asks the port of MESHRPC_ADMIN_ADDR.
        let port = test
            .get(3)
            .map_or(admin, |port| port_of(&format!(":{port}"), &name));
        if name == "mesh-api" {
            // The gateway's own /readyz, which knows its --require'd services.
            assert_eq!(port, port_of(&env["MESHRPC_HTTP_ADDR"], &name), "{name}");
        } else {
            assert_eq!(port, admin, "{name}: the admin endpoint serves /readyz");
        }
        for field in ["interval", "timeout", "start_period"] {
            compose_duration(text(&service["healthcheck"][field], &name), &name);
        }
    }
}

#[test]
fn compose_stop_grace_outlasts_the_drain() {
    let compose = compose();
    for (name, service) in compose_services(&compose) {
        let env = compose_env(&service, &name);
        let grace = compose_duration(text(&service["stop_grace_period"], &name), &name);
        let mut needed = seconds(&env["MESHRPC_DRAIN_TIMEOUT"], &name);
        if let Some(timeout) = env.get("MESHRPC_REQUEST_TIMEOUT") {
            // The gateway finishes its HTTP requests before it drains its node.
            needed += seconds(timeout, &name);
        }
        assert!(
            grace > needed,
            "{name}: stop_grace_period {grace}s must outlast {needed}s of draining"
        );
    }
}

#[test]
fn compose_nodes_share_one_development_ca() {
    let compose = compose();
    let volumes = compose["volumes"].as_hash().expect("top-level volumes");
    for (name, service) in compose_services(&compose) {
        let env = compose_env(&service, &name);
        for production in ["MESHRPC_CA", "MESHRPC_CERT", "MESHRPC_KEY"] {
            assert!(
                !env.contains_key(production),
                "{name}: compose is the dev setup"
            );
        }
        let state = &env["MESHRPC_STATE_DIR"];
        let mounts = strings(&service["volumes"], &name);
        assert_eq!(mounts, [format!("meshrpc-state:{state}")], "{name}");
        assert!(volumes.contains_key(&Yaml::String("meshrpc-state".into())));
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

struct Kubernetes {
    objects: Vec<(String, Yaml)>,
}

impl Kubernetes {
    fn load() -> Kubernetes {
        let mut objects = Vec::new();
        for (file, contents) in KUBERNETES {
            for document in documents(contents, file) {
                objects.push((file.to_owned(), document));
            }
        }
        Kubernetes { objects }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.objects
            .iter()
            .map(|(_, object)| object)
            .filter(|object| object["kind"].as_str() == Some(kind))
            .collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .into_iter()
            .find(|object| object["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} `{name}`"))
    }

    fn deployments(&self) -> Vec<(&str, &Yaml)> {
        self.of_kind("Deployment")
            .into_iter()
            .map(|deployment| (text(&deployment["metadata"]["name"], "name"), deployment))
            .collect()
    }
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    let containers = list(&deployment["spec"]["template"]["spec"]["containers"], name);
    assert_eq!(containers.len(), 1, "{name}: one container");
    &containers[0]
}

fn pod_labels(deployment: &Yaml, name: &str) -> BTreeMap<String, String> {
    string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        &format!("{name} pod labels"),
    )
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

fn k8s_env(container: &Yaml, name: &str) -> Env {
    let vars = list(&container["env"], name)
        .iter()
        .filter(|var| var["valueFrom"].is_badvalue())
        .map(|var| {
            (
                text(&var["name"], name).to_owned(),
                text(&var["value"], name).to_owned(),
            )
        })
        .collect();
    Env {
        of: name.to_owned(),
        vars,
    }
}

/// The container port a probe or Service refers to, by number or by name, with its protocol.
fn container_port(container: &Yaml, port: &Yaml, what: &str) -> (u16, String) {
    let ports = list(&container["ports"], what);
    let found = match port {
        Yaml::Integer(number) => ports
            .iter()
            .find(|candidate| candidate["containerPort"].as_i64() == Some(*number)),
        Yaml::String(name) => ports
            .iter()
            .find(|candidate| candidate["name"].as_str() == Some(name)),
        other => panic!("{what}: bad port {other:?}"),
    };
    let found = found.unwrap_or_else(|| panic!("{what}: the container declares no port {port:?}"));
    let number = integer(&found["containerPort"], what);
    (
        u16::try_from(number).expect("a port number"),
        text(&found["protocol"], what).to_owned(),
    )
}

#[test]
fn kustomization_lists_every_manifest_and_the_kinds_are_all_there() {
    let kustomization = &documents(KUSTOMIZATION, "kustomization.yaml")[0];
    assert_eq!(text(&kustomization["kind"], "kind"), "Kustomization");
    let resources: BTreeSet<String> = strings(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(
        resources, on_disk,
        "kustomization.yaml lists every manifest"
    );
    let tested: BTreeSet<String> = KUBERNETES
        .iter()
        .map(|(file, _)| file.to_string())
        .collect();
    assert_eq!(tested, on_disk, "this test reads every manifest");

    let k8s = Kubernetes::load();
    let mut kinds: Vec<(String, String)> = k8s
        .objects
        .iter()
        .map(|(_, object)| {
            (
                text(&object["kind"], "kind").to_owned(),
                text(&object["metadata"]["name"], "name").to_owned(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("Deployment", "concierge"),
            ("Deployment", "greeter"),
            ("Deployment", "mesh-api"),
            ("Service", "mesh-api"),
            ("Service", "meshrpc-seeds"),
        ]
        .map(|(kind, name)| (kind.to_owned(), name.to_owned()))
    );
    for (file, object) in &k8s.objects {
        assert!(
            object["metadata"]["namespace"].is_badvalue(),
            "{file}: the manifests are namespace-free"
        );
    }
    assert_eq!(
        integer(
            &k8s.get("Deployment", "greeter")["spec"]["replicas"],
            "replicas"
        ),
        3
    );
}

#[test]
fn the_seed_service_is_headless_and_selects_every_mesh_pod() {
    let k8s = Kubernetes::load();
    let seeds = k8s.get("Service", "meshrpc-seeds");
    let spec = &seeds["spec"];
    assert_eq!(text(&spec["clusterIP"], "clusterIP"), "None", "headless");
    assert_eq!(
        spec["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "pods become ready only after joining, so seeding must not wait for readiness"
    );
    let ports = list(&spec["ports"], "seed ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(text(&ports[0]["protocol"], "protocol"), "UDP");
    let mesh = constant_number(SEEDS, "DEFAULT_PORT: u16 =");
    assert_eq!(
        u64::try_from(integer(&ports[0]["port"], "port")).ok(),
        Some(mesh),
        "seeds are named without a port, so they must answer on the default"
    );
    let selector = string_map(&spec["selector"], "seed selector");

    for (name, deployment) in k8s.deployments() {
        assert!(
            selects(&selector, &pod_labels(deployment, name)),
            "meshrpc-seeds does not select the {name} pods"
        );
        let container = container(deployment, name);
        let env = k8s_env(container, name);
        assert_eq!(env["MESHRPC_CLUSTER_NODES"], "meshrpc-seeds", "{name}");
        assert_eq!(env["MESHRPC_CLUSTER_NAME"], "default", "{name}");
        let (target, protocol) = container_port(container, &ports[0]["targetPort"], name);
        assert_eq!(
            (u64::from(target), protocol.as_str()),
            (mesh, "UDP"),
            "{name}"
        );
        assert_eq!(port_of(&env["MESHRPC_LISTEN_ADDR"], name), target, "{name}");
        assert_eq!(
            env["MESHRPC_ADVERTISE_ADDR"],
            format!("$(POD_IP):{target}"),
            "{name}: advertise the pod IP"
        );
        let pod_ip = list(&container["env"], name)
            .iter()
            .position(|var| var["name"].as_str() == Some("POD_IP"))
            .expect("POD_IP");
        let advertise = list(&container["env"], name)
            .iter()
            .position(|var| var["name"].as_str() == Some("MESHRPC_ADVERTISE_ADDR"))
            .expect("MESHRPC_ADVERTISE_ADDR");
        assert!(
            pod_ip < advertise,
            "{name}: $(POD_IP) expands only if declared first"
        );
    }
}

#[test]
fn deployments_select_their_own_pods_and_share_one_image() {
    let k8s = Kubernetes::load();
    let binaries = binaries();
    let mut images = BTreeSet::new();
    let deployments = k8s.deployments();
    for (name, deployment) in &deployments {
        let selector = string_map(
            &deployment["spec"]["selector"]["matchLabels"],
            &format!("{name} selector"),
        );
        assert!(selects(&selector, &pod_labels(deployment, name)), "{name}");
        for (other, other_deployment) in &deployments {
            if other != name {
                assert!(
                    !selects(&selector, &pod_labels(other_deployment, other)),
                    "{name}'s selector also takes the {other} pods"
                );
            }
        }
        let container = container(deployment, name);
        images.insert(text(&container["image"], name).to_owned());
        let command = strings(&container["command"], name);
        assert!(binaries.contains(&command[0]), "{name}: {command:?}");
        assert_eq!(command[0], *name);
    }
    assert_eq!(images.len(), 1, "one image: {images:?}");
    let kustomization = &documents(KUSTOMIZATION, "kustomization.yaml")[0];
    let image = images.first().expect("an image");
    let kustomized = text(
        &list(&kustomization["images"], "images")[0]["name"],
        "images",
    );
    assert!(
        image.starts_with(&format!("{kustomized}:")),
        "kustomization.yaml `images` must name {image}"
    );
}

#[test]
fn probes_hit_the_ports_the_environment_configures() {
    let k8s = Kubernetes::load();
    for (name, deployment) in k8s.deployments() {
        let container = container(deployment, name);
        let env = k8s_env(container, name);
        let admin = port_of(&env["MESHRPC_ADMIN_ADDR"], name);

        let readiness = &container["readinessProbe"]["httpGet"];
        assert_eq!(text(&readiness["path"], name), "/readyz", "{name}");
        let (port, protocol) = container_port(container, &readiness["port"], name);
        assert_eq!(protocol, "TCP");
        if let Some(http) = env.get("MESHRPC_HTTP_ADDR") {
            // The gateway's own /readyz knows the services it requires.
            assert_eq!(port, port_of(http, name), "{name}");
            assert!(
                env.contains_key("MESHRPC_REQUIRE"),
                "{name}: readiness needs --require"
            );
        } else {
            assert_eq!(port, admin, "{name}: /readyz is on the admin port");
        }

        let liveness = &container["livenessProbe"]["httpGet"];
        assert_eq!(text(&liveness["path"], name), "/healthz", "{name}");
        assert_eq!(container_port(container, &liveness["port"], name).0, admin);

        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            text(&annotations["prometheus.io/port"], name),
            admin.to_string(),
            "{name}: Prometheus scrapes the admin port"
        );
        assert_eq!(text(&annotations["prometheus.io/path"], name), "/metrics");
    }
}

#[test]
fn termination_grace_outlasts_pre_stop_and_drain() {
    let k8s = Kubernetes::load();
    for (name, deployment) in k8s.deployments() {
        let grace = integer(
            &deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            name,
        ) as f64;
        let container = container(deployment, name);
        let env = k8s_env(container, name);
        let mut needed = seconds(&env["MESHRPC_DRAIN_TIMEOUT"], name);
        if let Some(timeout) = env.get("MESHRPC_REQUEST_TIMEOUT") {
            needed += seconds(timeout, name);
        }
        let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
        if !pre_stop.is_badvalue() {
            let command = strings(pre_stop, name);
            assert_eq!(command[0], "sleep", "{name}");
            needed += seconds(&command[1], name);
        }
        assert!(
            grace > needed,
            "{name}: terminationGracePeriodSeconds {grace} must outlast {needed}s"
        );
    }
}

#[test]
fn certificates_come_read_only_from_the_meshrpc_tls_secret() {
    let k8s = Kubernetes::load();
    let stages = dockerfile_stages();
    let image_uid: i64 = instructions(&stages[1], "USER")
        .last()
        .and_then(|user| user.split(':').next())
        .and_then(|uid| uid.parse().ok())
        .expect("USER uid");
    for (name, deployment) in k8s.deployments() {
        let pod = &deployment["spec"]["template"]["spec"];
        let volumes = list(&pod["volumes"], name);
        let tls = volumes
            .iter()
            .find(|volume| volume["secret"]["secretName"].as_str() == Some("meshrpc-tls"))
            .unwrap_or_else(|| panic!("{name}: no volume from the Secret meshrpc-tls"));
        let volume = text(&tls["name"], name);
        assert!(
            tls["secret"]["items"].is_badvalue(),
            "{name}: every key of the Secret is a file"
        );
        let mode = integer(&tls["secret"]["defaultMode"], name);
        assert_eq!(mode & 0o007, 0, "{name}: the key is not world-readable");

        let container = container(deployment, name);
        let mount = list(&container["volumeMounts"], name)
            .iter()
            .find(|mount| mount["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("{name}: {volume} is not mounted"));
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "{name}");
        let dir = text(&mount["mountPath"], name);
        let env = k8s_env(container, name);
        for (var, key) in [
            ("MESHRPC_CA", "ca.pem"),
            ("MESHRPC_CERT", "tls.crt"),
            ("MESHRPC_KEY", "tls.key"),
        ] {
            assert_eq!(env[var], format!("{dir}/{key}"), "{name}: {var}");
        }

        let security = &pod["securityContext"];
        assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{name}");
        assert_eq!(integer(&security["runAsUser"], name), image_uid, "{name}");
        assert_eq!(
            integer(&security["fsGroup"], name),
            image_uid,
            "{name}: fsGroup lets the user read the 0440 key"
        );
    }
}

#[test]
fn the_gateway_service_sends_http_to_8282_of_the_gateway_pods_only() {
    let k8s = Kubernetes::load();
    let service = k8s.get("Service", "mesh-api");
    let selector = string_map(&service["spec"]["selector"], "mesh-api selector");
    for (name, deployment) in k8s.deployments() {
        assert_eq!(
            selects(&selector, &pod_labels(deployment, name)),
            name == "mesh-api",
            "the mesh-api Service and the {name} pods"
        );
    }
    let gateway = container(k8s.get("Deployment", "mesh-api"), "mesh-api");
    let ports = list(&service["spec"]["ports"], "mesh-api ports");
    assert_eq!(ports.len(), 1, "only HTTP");
    assert_eq!(integer(&ports[0]["port"], "port"), 8282);
    let (target, protocol) = container_port(gateway, &ports[0]["targetPort"], "mesh-api");
    assert_eq!((target, protocol.as_str()), (8282, "TCP"));
    let env = k8s_env(gateway, "mesh-api");
    assert_eq!(port_of(&env["MESHRPC_HTTP_ADDR"], "mesh-api"), target);
}

#[test]
fn resources_fit_the_measured_footprint() {
    // An idle node holds about 11 MiB RSS (measured): requests must cover it, limits leave
    // room for calls in flight.
    let idle = 11 << 20;
    let k8s = Kubernetes::load();
    for (name, deployment) in k8s.deployments() {
        let resources = &container(deployment, name)["resources"];
        let request = memory_bytes(text(&resources["requests"]["memory"], name), name);
        let limit = memory_bytes(text(&resources["limits"]["memory"], name), name);
        assert!(request >= idle * 2, "{name}: {request} bytes is too tight");
        assert!(
            limit >= request * 2,
            "{name}: limit {limit} leaves no headroom"
        );
        assert!(limit <= 1 << 30, "{name}: {limit} bytes is far above need");
        assert!(resources["requests"]["cpu"].as_str().is_some(), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Flags and environment against the binaries

#[test]
fn every_flag_and_variable_the_manifests_use_exists() {
    let declared = declared_env();
    let flags = declared_flags();
    let mut used_env: Vec<(String, String)> = Vec::new();
    let mut used_args: Vec<(String, Vec<String>)> = Vec::new();

    let compose = compose();
    for (name, service) in compose_services(&compose) {
        for (var, value) in compose_env(&service, &name).vars {
            used_env.push((var, value));
        }
        used_args.push((name.clone(), strings(&service["command"], &name)));
    }
    let k8s = Kubernetes::load();
    for (name, deployment) in k8s.deployments() {
        let container = container(deployment, name);
        for var in list(&container["env"], name) {
            let value = var["value"].as_str().unwrap_or_default();
            used_env.push((text(&var["name"], name).to_owned(), value.to_owned()));
        }
        let mut args = strings(&container["command"], name);
        if !container["args"].is_badvalue() {
            args.extend(strings(&container["args"], name));
        }
        used_args.push((name.to_owned(), args));
    }

    for (var, value) in &used_env {
        assert!(
            declared.contains(var) || OTHER_ENV.contains(&var.as_str()),
            "{var} is read by no binary (not in meshrpc/src/cli.rs or gateway/src/config.rs)"
        );
        if var.ends_with("_ADDR") && !value.contains("$(") {
            value
                .parse::<std::net::SocketAddr>()
                .unwrap_or_else(|_| panic!("{var}={value} is not an address"));
        }
        if var.ends_with("_TIMEOUT") {
            seconds(value, var);
        }
    }
    for (name, args) in &used_args {
        for arg in args.iter().filter(|arg| arg.starts_with("--")) {
            let flag = arg.split('=').next().unwrap_or_default();
            assert!(
                flags.contains(flag),
                "{name}: `{flag}` is not a flag: {flags:?}"
            );
        }
    }
}

#[test]
fn operations_guide_documents_every_flag_variable_and_metric() {
    for var in declared_env() {
        assert!(
            OPERATIONS.contains(&format!("`{var}`")),
            "docs/OPERATIONS.md does not document {var}"
        );
    }
    for flag in declared_flags() {
        assert!(
            OPERATIONS.contains(&format!("`{flag}")),
            "docs/OPERATIONS.md does not document {flag}"
        );
    }
    for metric in [
        "calls",
        "call_duration_seconds",
        "members",
        "calls_in_flight",
    ] {
        assert!(
            METRICS.contains(&format!("\"{metric}\"")),
            "meshrpc no longer registers {metric}"
        );
        assert!(
            OPERATIONS.contains(&format!("meshrpc_{metric}")),
            "docs/OPERATIONS.md does not name meshrpc_{metric}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// meshrpc-probe, the compose health check

/// Serves `/readyz` with 200 and everything else with 503, recording request lines.
fn fake_admin() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Read the headers: closing with unread input would reset the connection.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|read| read > 2) {
                header.clear();
            }
            let status = if request_line.starts_with("GET /readyz ") {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = sender.send(request_line.trim_end().to_owned());
            let _ = write!(stream, "HTTP/1.0 {status}\r\ncontent-length: 3\r\n\r\nok\n");
        }
    });
    (port, receiver)
}

fn probe(args: &[&str], admin_addr: Option<&str>) -> bool {
    let script = deploy_dir().join("meshrpc-probe");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .args(args)
        .env_remove("MESHRPC_ADMIN_ADDR");
    if let Some(addr) = admin_addr {
        command.env("MESHRPC_ADMIN_ADDR", addr);
    }
    let output = command.output().expect("run bash");
    eprintln!(
        "meshrpc-probe {args:?}: {}, {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output.status.success()
}

#[test]
fn the_probe_passes_on_200_and_fails_on_anything_else() {
    let (port, requests) = fake_admin();
    let port_arg = port.to_string();
    assert!(probe(&["/readyz", &port_arg], None));
    assert_eq!(requests.recv().expect("a request"), "GET /readyz HTTP/1.0");
    assert!(!probe(&["/elsewhere", &port_arg], None), "503 fails");
    // Without a port argument the probe asks the port of MESHRPC_ADMIN_ADDR.
    assert!(probe(&[], Some(&format!("0.0.0.0:{port}"))));

    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    assert!(
        !probe(&["/readyz", &closed_port.to_string()], None),
        "a closed port fails"
    );
    assert!(deploy_dir().join("meshrpc-probe").is_file());
}
