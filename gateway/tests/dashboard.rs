//! The dashboard against real processes: the `mesh-api` binary and `greeter` replicas on
//! loopback, sharing one temporary state directory (one development CA) and a cluster name of
//! their own; every child is killed when the test ends, failed or not.
//!
//! - `/dashboard/state` lists each greeter's address, counts the calls made through the
//!   gateway, and shows a greeter killed with SIGKILL as `down` (no longer a replica) once the
//!   mesh notices; a new greeter appears;
//! - both dashboard routes want the API key (bearer or Basic password) when there are keys;
//! - a real headless Chromium (Debian's `chromium`, run as a subprocess with `--dump-dom` and
//!   `--screenshot`, pointed at 127.0.0.1 only) shows each member's address, then the killed
//!   one as down and no longer among the replicas, and leaves a screenshot at `target/dashboard/dashboard.png`. Without
//!   `chromium` on the `PATH` that test says so and passes, unless `MESHRPC_REQUIRE_CHROMIUM=1`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{Gateway, Process, addr_after, get, send, start_gateway, workspace_binary};
use serde_json::Value;
use tokio::time::Instant;

/// A running `greeter` and the address it advertises to the mesh.
struct Greeter {
    addr: SocketAddr,
    process: Process,
}

fn start_greeter(binary: &Path, gateway: &Gateway, state: &Path, cluster: &str) -> Greeter {
    let (process, line) = common::start_service(binary, gateway, state, cluster);
    Greeter {
        addr: addr_after(&line, "advertised as "),
        process,
    }
}

fn greeter_binary() -> PathBuf {
    workspace_binary("greeter").expect("the greeter binary (cargo build -p greeter)")
}

async fn state(gateway: &Gateway) -> Value {
    let answer = get(gateway.http, "/dashboard/state").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()
}

fn member(state: &Value, addr: SocketAddr) -> Option<&Value> {
    state["members"]
        .as_array()?
        .iter()
        .find(|member| member["addr"] == addr.to_string())
}

fn method<'a>(state: &'a Value, service: &str, name: &str) -> Option<&'a Value> {
    state["services"]
        .as_array()?
        .iter()
        .find(|entry| entry["service"] == service)?["methods"]
        .as_array()?
        .iter()
        .find(|entry| entry["method"] == name)
}

fn replicas(state: &Value, service: &str) -> Vec<String> {
    state["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["service"] == service)
        .flat_map(|entry| entry["replicas"].as_array().into_iter().flatten())
        .filter_map(|replica| replica["addr"].as_str().map(str::to_owned))
        .collect()
}

/// Polls `/dashboard/state` every 200 ms until `done` holds, for at most `within`; panics
/// with `what` and the last state otherwise.
async fn wait_for_state(
    gateway: &Gateway,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let state = state(gateway).await;
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}; the last state: {state:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes `count` greet calls through the gateway.
async fn greet(gateway: &Gateway, count: usize) {
    for n in 0..count {
        let answer = get(gateway.http, &format!("/greeter/greet/visitor{n}")).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
}

/// A gateway and two greeters, both listed on the dashboard and asked for their stats.
struct Mesh {
    _state: tempfile::TempDir,
    gateway: Gateway,
    greeters: Vec<Greeter>,
}

async fn mesh_of_two(cluster: &str) -> Mesh {
    let binary = greeter_binary();
    let state = tempfile::tempdir().expect("a temporary directory");
    let gateway = start_gateway(state.path(), cluster, &[]);
    let greeters: Vec<Greeter> = (0..2)
        .map(|_| start_greeter(&binary, &gateway, state.path(), cluster))
        .collect();
    let addrs: Vec<SocketAddr> = greeters.iter().map(|greeter| greeter.addr).collect();
    wait_for_state(
        &gateway,
        Duration::from_secs(30),
        "both greeters listed",
        |state| {
            addrs.iter().all(|addr| {
                // Sampled at least once: calls before a member's first sample cannot be placed
                // in time, so they count in its total only.
                member(state, *addr)
                    .is_some_and(|member| member["state"] == "alive" && member["stats"] == "ok")
                    && replicas(state, "greeter").contains(&addr.to_string())
            })
        },
    )
    .await;
    Mesh {
        _state: state,
        gateway,
        greeters,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_lists_each_greeter_counts_calls_and_shows_a_killed_one_down() {
    let cluster = format!("dashboard-state-{}", std::process::id());
    let mut mesh = mesh_of_two(&cluster).await;
    let gateway = &mesh.gateway;

    let state = state(gateway).await;
    for greeter in &mesh.greeters {
        let listed = member(&state, greeter.addr).expect("listed");
        assert_eq!(listed["name"], "greeter");
        assert_eq!(listed["services"], serde_json::json!(["greeter"]));
        assert_eq!(listed["local"], false);
    }
    let itself = member(&state, gateway.mesh).expect("the gateway lists itself");
    assert_eq!(itself["local"], true);

    // Calls made through the gateway show up as the greeters counted them.
    greet(gateway, 30).await;
    let state = wait_for_state(
        gateway,
        Duration::from_secs(30),
        "30 greet calls",
        |state| {
            method(state, "greeter", "greet")
                .is_some_and(|greet| greet["calls"].as_u64() >= Some(30))
        },
    )
    .await;
    let greet_stats = method(&state, "greeter", "greet").expect("greet");
    assert_eq!(greet_stats["errors"], 0, "{greet_stats}");
    assert_eq!(greet_stats["error_rate"], 0.0, "{greet_stats}");
    assert!(
        greet_stats["calls_total"].as_u64() >= Some(30),
        "{greet_stats}"
    );
    assert!(
        greet_stats["calls_per_s_minute"].as_f64() > Some(0.0),
        "{greet_stats}"
    );
    let p50 = greet_stats["p50_ms"].as_f64().expect("a p50");
    let p99 = greet_stats["p99_ms"].as_f64().expect("a p99");
    assert!(p50 > 0.0 && p50 <= p99, "{greet_stats}");
    // The dashboard's own polls of meshrpc.node are left out unless asked for.
    assert!(
        method(&state, "meshrpc.node", "stats").is_none(),
        "{state:#}"
    );
    let all = get(gateway.http, "/dashboard/state?all=1").await.json();
    assert!(
        method(&all, "meshrpc.node", "stats")
            .is_some_and(|stats| stats["calls_total"].as_u64().is_some_and(|calls| calls > 0)),
        "{all:#}"
    );

    // SIGKILL one greeter: once the mesh notices, the dashboard shows it down and no longer
    // as a replica.
    let killed = mesh.greeters.remove(0);
    let survivor = mesh.greeters[0].addr;
    drop(killed.process);
    let state = wait_for_state(
        gateway,
        Duration::from_secs(60),
        "the killed greeter down",
        |state| {
            member(state, killed.addr).is_some_and(|member| member["state"] == "down")
                && !replicas(state, "greeter").contains(&killed.addr.to_string())
        },
    )
    .await;
    assert_eq!(
        member(&state, killed.addr).expect("listed")["stats"],
        "gone"
    );
    assert!(
        member(&state, survivor).is_some_and(|member| member["state"] == "alive"),
        "{state:#}"
    );
    assert_eq!(
        replicas(&state, "greeter"),
        vec![survivor.to_string()],
        "{state:#}"
    );

    // A new replica appears.
    let binary = greeter_binary();
    let newcomer = start_greeter(&binary, gateway, mesh._state.path(), &cluster);
    wait_for_state(
        gateway,
        Duration::from_secs(30),
        "the new greeter listed",
        |state| member(state, newcomer.addr).is_some(),
    )
    .await;
    mesh.greeters.push(newcomer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_wants_the_api_key_and_the_probes_do_not() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let cluster = format!("dashboard-keys-{}", std::process::id());
    let gateway = start_gateway(state.path(), &cluster, &["--api-key", "s3cret"]);
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    for path in ["/dashboard", "/dashboard/state"] {
        let refused = get(gateway.http, path).await;
        assert_eq!(refused.status, 401, "{path}: {refused:?}");
        let offers: Vec<&str> = refused
            .headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        assert!(
            offers.iter().any(|offer| offer.starts_with("Basic ")),
            "{path}: {offers:?}"
        );
        let wrong = send(
            gateway.http,
            "GET",
            path,
            &[("authorization", &basic("operator:wrong"))],
            "",
        )
        .await;
        assert_eq!(wrong.status, 401, "{path}");
        for authorization in ["Bearer s3cret".to_owned(), basic("operator:s3cret")] {
            let answer = send(
                gateway.http,
                "GET",
                path,
                &[("authorization", &authorization)],
                "",
            )
            .await;
            assert_eq!(answer.status, 200, "{path} with {authorization}");
        }
    }
    // Basic is for the dashboard only.
    let elsewhere = send(
        gateway.http,
        "GET",
        "/openapi.json",
        &[("authorization", &basic("operator:s3cret"))],
        "",
    )
    .await;
    assert_eq!(elsewhere.status, 401);
    assert_eq!(get(gateway.http, "/healthz").await.status, 200);

    let page = send(
        gateway.http,
        "GET",
        "/dashboard",
        &[("authorization", "Bearer s3cret")],
        "",
    )
    .await;
    assert_eq!(
        page.headers[http::header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert!(
        page.body.contains("dashboard/state"),
        "the page polls its state"
    );
    // Nothing is loaded from anywhere else.
    for outside in ["http://", "https://", "//cdn", "src=\"//"] {
        assert!(!page.body.contains(outside), "{outside} in the page");
    }
}

/// Where the screenshot goes: `target/dashboard/` of the workspace.
fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard")
}

/// The start of an alive member's row in the members table, as the DOM dump shows it.
fn member_row(addr: SocketAddr) -> String {
    format!("<tr data-addr=\"{addr}\" data-state=\"alive\">")
}

/// `chromium`'s path, if it is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom`, `--screenshot=...`): after the
/// page has had 5 s of (virtual) time to poll its state. Its own process group, killed when
/// it outlives 90 s. Returns its stdout.
async fn run_chromium(chromium: &Path, profile: &Path, url: &str, mode: &[&str]) -> String {
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-features=MediaRouter,OptimizationHints,Translate",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().expect("chromium starts");
    let group = child.id().expect("a pid");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output()).await;
    // Whatever happened, nothing of its group outlives the run.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let output = output
        .unwrap_or_else(|_| panic!("chromium {mode:?} did not finish within 90 s"))
        .expect("chromium's output");
    assert!(
        output.status.success(),
        "chromium {mode:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_shows_each_member_and_a_killed_one_down() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("MESHRPC_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "MESHRPC_REQUIRE_CHROMIUM=1 but chromium is not installed \
             (apt-get install -y chromium)"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install -y chromium); \
             set MESHRPC_REQUIRE_CHROMIUM=1 to make this a failure"
        );
        return;
    };
    let cluster = format!("dashboard-chromium-{}", std::process::id());
    let mut mesh = mesh_of_two(&cluster).await;
    greet(&mesh.gateway, 40).await;
    wait_for_state(
        &mesh.gateway,
        Duration::from_secs(30),
        "40 greet calls",
        |state| {
            method(state, "greeter", "greet")
                .is_some_and(|greet| greet["calls"].as_u64() >= Some(40))
        },
    )
    .await;
    let profile = tempfile::tempdir().expect("a profile directory");
    let url = format!("http://{}/dashboard", mesh.gateway.http);

    let dom = run_chromium(&chromium, profile.path(), &url, &["--dump-dom"]).await;
    for greeter in &mesh.greeters {
        assert!(
            dom.contains(&member_row(greeter.addr)),
            "{} not in the members table: {dom}",
            greeter.addr
        );
    }
    assert!(dom.contains(&member_row(mesh.gateway.mesh)), "{dom}");
    assert!(dom.contains("data-method=\"greeter/greet\""), "{dom}");
    assert!(
        dom.contains("class=\"live\""),
        "the page did not load its state: {dom}"
    );

    let artifacts = artifact_dir();
    std::fs::create_dir_all(&artifacts).expect("target/dashboard");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        &chromium,
        profile.path(),
        &url,
        &[&format!("--screenshot={}", screenshot.display())],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    eprintln!("screenshot: {}", screenshot.display());

    // SIGKILL one greeter; once the mesh noticed, the page no longer shows it.
    let killed = mesh.greeters.remove(0);
    drop(killed.process);
    wait_for_state(
        &mesh.gateway,
        Duration::from_secs(60),
        "the killed greeter down",
        |state| member(state, killed.addr).is_some_and(|member| member["state"] == "down"),
    )
    .await;
    let dom = run_chromium(&chromium, profile.path(), &url, &["--dump-dom"]).await;
    assert!(
        dom.contains(&format!(
            "<tr data-addr=\"{}\" data-state=\"down\">",
            killed.addr
        )),
        "{} not shown down: {dom}",
        killed.addr
    );
    assert!(!dom.contains(&member_row(killed.addr)), "{dom}");
    let services = dom
        .split_once("id=\"services\"")
        .map(|(_, after)| after)
        .expect("the services table");
    assert!(
        !services.contains(&killed.addr.to_string()),
        "{} still a replica: {services}",
        killed.addr
    );
    assert!(dom.contains(&member_row(mesh.greeters[0].addr)), "{dom}");
}
