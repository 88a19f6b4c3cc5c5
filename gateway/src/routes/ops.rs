//! Operations routes: `/healthz` (the process answers), `/readyz` (every dependency has a live
//! member), `/metrics` (the gateway's and the node's) and `/openapi.json`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use meshrpc::membership::Liveness;
use serde::Serialize;

use crate::Shared;
use crate::descriptors::CompiledDescriptor;
use crate::openapi;

/// `GET /healthz`: 200 `ok` while the process serves.
pub async fn healthz() -> &'static str {
    "ok"
}

/// One dependency in `/readyz`.
#[derive(Debug, Serialize)]
pub struct Dependency {
    /// The service.
    pub service: String,
    /// Whether the gateway was told it needs it (`--require`).
    pub required: bool,
    /// Whether a live member serves it (RPC or legacy HTTP).
    pub live: bool,
    /// Live members that publish its methods.
    pub rpc_members: usize,
    /// Live members that serve its legacy HTTP handlers.
    pub http_members: usize,
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether every required dependency is live.
    pub ready: bool,
    /// Members in the gateway's view, itself included.
    pub members: usize,
    /// Every known service and every required one.
    pub dependencies: Vec<Dependency>,
}

/// `GET /readyz`: each dependency and whether it is live; 503 while a required one is not.
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let view = shared.node.view();
    shared.descriptors.observe(&view);
    let mut names = shared.descriptors.known_services();
    names.extend(view.services());
    names.extend(shared.config.require.iter().cloned());
    names.sort_unstable();
    names.dedup();
    let live = |member: &&meshrpc::membership::MemberView| {
        member.liveness == Liveness::Alive && member.accepts_calls()
    };
    let dependencies: Vec<Dependency> = names
        .into_iter()
        .map(|service| {
            let rpc_members = view.publishing(&service).filter(live).count();
            let http_members = view.serving_http(&service).filter(live).count();
            Dependency {
                required: shared.config.require.contains(&service),
                live: rpc_members + http_members > 0,
                rpc_members,
                http_members,
                service,
            }
        })
        .collect();
    let ready = dependencies
        .iter()
        .all(|dependency| dependency.live || !dependency.required);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        members: view.members().len(),
        dependencies,
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text (OpenMetrics).
pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .metrics
        .set_admission(shared.admission.in_flight(), shared.admission.buffered());
    let text = shared.metrics.render(&shared.node.render_metrics());
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`: the document of every method known now.
pub async fn openapi(State(shared): State<Arc<Shared>>) -> Response {
    let descriptors = shared.descriptors.all().await;
    let descriptors: Vec<&CompiledDescriptor> = descriptors.iter().map(Arc::as_ref).collect();
    Json(openapi::document(
        &descriptors,
        shared.keys.enabled(),
        &shared.extensions,
    ))
    .into_response()
}
