//! `meshctl members`: every member in the seed's view, with its state, services, tags and age.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshrpc::node_service::MemberSummary;
use serde_json::json;

use crate::connect::Mesh;
use crate::failure::{Failure, print_json};
use crate::table::Table;

/// `alive`, `suspect` or `draining`.
pub(crate) fn state(member: &MemberSummary) -> &'static str {
    if member.draining {
        "draining"
    } else if member.suspect {
        "suspect"
    } else {
        "alive"
    }
}

/// How long ago the member started, from its generation (microseconds since the epoch at
/// start, one more per change); `None` when the member did not say or the clocks disagree.
pub(crate) fn age(member: &MemberSummary) -> Option<Duration> {
    if member.generation == 0 {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let started = Duration::from_micros(member.generation);
    now.checked_sub(started)
}

/// `3s`, `4m`, `2h`, `5d`: an age at a glance.
pub(crate) fn short_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Prints the members.
pub(crate) fn run(mesh: &Mesh, json: bool) -> Result<(), Failure> {
    if json {
        let members: Vec<serde_json::Value> = mesh
            .members
            .iter()
            .map(|member| {
                json!({
                    "name": member.name,
                    "addr": member.addr,
                    "state": state(member),
                    "services": member.services,
                    "schema_hashes": member.schema_hashes,
                    "tags": member.tags,
                    "age_s": age(member).map(|age| age.as_secs()),
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(members));
    }
    let mut table = Table::new(&["NAME", "ADDR", "STATE", "SERVICES", "TAGS", "AGE"]);
    for member in &mesh.members {
        table.row(vec![
            member.name.clone(),
            member.addr.clone(),
            state(member).to_owned(),
            if member.services.is_empty() {
                "-".to_owned()
            } else {
                member.services.join(",")
            },
            if member.tags.is_empty() {
                "-".to_owned()
            } else {
                member.tags.join(",")
            },
            age(member).map_or_else(|| "-".to_owned(), short_age),
        ]);
    }
    crate::failure::out!("{}", table.render());
    Ok(())
}
