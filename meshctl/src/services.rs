//! `meshctl services`: each service with its replicas, schema hash (and whether replicas
//! disagree) and methods. Methods come from one replica per schema (`meshrpc.node/describe`).

use std::collections::BTreeMap;

use serde_json::json;

use crate::connect::Mesh;
use crate::failure::{Failure, print_json};
use crate::members::state;
use crate::table::Table;

/// One schema of a service: its hash, the replicas that publish it and its methods.
#[derive(Debug)]
struct Schema {
    hash: String,
    replicas: Vec<(String, String, &'static str)>,
    methods: Result<Vec<String>, String>,
}

/// Prints every service.
pub(crate) async fn run(mesh: &Mesh, json: bool) -> Result<(), Failure> {
    let mut services: BTreeMap<String, Vec<Schema>> = BTreeMap::new();
    for service in mesh.services() {
        let mut by_hash: BTreeMap<String, Vec<(String, String, &'static str)>> = BTreeMap::new();
        for member in mesh
            .members
            .iter()
            .filter(|member| member.services.contains(&service))
        {
            let hash = member
                .schema_hashes
                .get(&service)
                .cloned()
                .unwrap_or_else(|| "?".to_owned());
            by_hash.entry(hash).or_default().push((
                member.name.clone(),
                member.addr.clone(),
                state(member),
            ));
        }
        let mut schemas = Vec::new();
        for (hash, replicas) in by_hash {
            let wanted = (hash != "?").then_some(hash.as_str());
            let methods = match mesh.describe(&service, wanted).await {
                Ok(described) => Ok(described
                    .descriptor
                    .methods
                    .iter()
                    .map(|method| method.name.clone())
                    .collect()),
                Err(failure) => Err(failure.message),
            };
            schemas.push(Schema {
                hash,
                replicas,
                methods,
            });
        }
        services.insert(service, schemas);
    }

    if json {
        let list: Vec<serde_json::Value> = services
            .iter()
            .map(|(service, schemas)| {
                let replicas: Vec<serde_json::Value> = schemas
                    .iter()
                    .flat_map(|schema| {
                        schema.replicas.iter().map(|(name, addr, state)| {
                            json!({
                                "name": name,
                                "addr": addr,
                                "state": state,
                                "schema_hash": schema.hash,
                            })
                        })
                    })
                    .collect();
                let methods = schemas
                    .iter()
                    .find_map(|schema| schema.methods.as_ref().ok())
                    .cloned()
                    .unwrap_or_default();
                json!({
                    "service": service,
                    "replicas": replicas,
                    "schema_hashes": schemas.iter().map(|s| s.hash.clone()).collect::<Vec<_>>(),
                    "schemas_agree": schemas.len() == 1,
                    "methods": methods,
                    "schemas": schemas.iter().map(|schema| json!({
                        "schema_hash": schema.hash,
                        "replicas": schema.replicas.len(),
                        "methods": schema.methods.as_ref().ok(),
                        "error": schema.methods.as_ref().err(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(list));
    }

    if services.is_empty() {
        crate::failure::outln!("{}", mesh.services_sentence());
        return Ok(());
    }
    let mut table = Table::new(&["SERVICE", "REPLICAS", "SCHEMA", "METHODS"]);
    let mut notes = Vec::new();
    for (service, schemas) in &services {
        for schema in schemas {
            // Replicas that share a name (the same binary, several times) go by address.
            let all_names: Vec<&String> = schemas
                .iter()
                .flat_map(|schema| schema.replicas.iter().map(|(name, _, _)| name))
                .collect();
            let replicas: Vec<String> = schema
                .replicas
                .iter()
                .map(|(name, addr, state)| {
                    let shared = all_names.iter().filter(|other| **other == name).count() > 1;
                    let who = if shared {
                        format!("{name}@{addr}")
                    } else {
                        name.clone()
                    };
                    if *state == "alive" {
                        who
                    } else {
                        format!("{who} ({state})")
                    }
                })
                .collect();
            let hash = if schemas.len() > 1 {
                format!("{} (replicas disagree)", schema.hash)
            } else {
                schema.hash.clone()
            };
            let methods = match &schema.methods {
                Ok(methods) => methods.join(", "),
                Err(error) => {
                    notes.push(error.clone());
                    "?".to_owned()
                }
            };
            table.row(vec![service.clone(), replicas.join(", "), hash, methods]);
        }
    }
    crate::failure::out!("{}", table.render());
    for note in notes {
        eprintln!("meshctl: {note}");
    }
    Ok(())
}
