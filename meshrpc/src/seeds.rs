//! Seed addresses: `host[:port]` entries (port 11999 by default), resolved to *all* their
//! addresses and re-resolved periodically, so a DNS name that fronts several replicas (a
//! Kubernetes headless Service, a Docker service name) seeds from each of them.

use std::net::SocketAddr;

/// The port seeds use when none is given.
pub const DEFAULT_PORT: u16 = 11999;

/// Parses a comma-separated seed list (`MESHRPC_CLUSTER_NODES` / `--nodes`) into entries.
pub fn parse_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `host:port` for an entry, adding the default port when it has none.
pub fn with_port(entry: &str) -> String {
    if entry.parse::<SocketAddr>().is_ok() {
        return entry.to_owned();
    }
    if entry.starts_with('[') {
        // A bracketed IPv6 address without a port.
        return format!("{entry}:{DEFAULT_PORT}");
    }
    match entry.rsplit_once(':') {
        Some((_, port))
            if port.parse::<u16>().is_ok()
                && !entry[..entry.len() - port.len() - 1].contains(':') =>
        {
            entry.to_owned()
        }
        _ if entry.parse::<std::net::IpAddr>().is_ok() => {
            SocketAddr::new(entry.parse().unwrap_or([127, 0, 0, 1].into()), DEFAULT_PORT)
                .to_string()
        }
        _ => format!("{entry}:{DEFAULT_PORT}"),
    }
}

/// Resolves every entry to all of its addresses; entries that do not resolve are skipped
/// (they may resolve later) and reported in the log.
pub async fn resolve(entries: &[String]) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for entry in entries {
        let target = with_port(entry);
        match tokio::net::lookup_host(target.as_str()).await {
            Ok(resolved) => addrs.extend(resolved),
            Err(error) => tracing::debug!(seed = %entry, %error, "seed does not resolve (yet)"),
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_get_the_default_port_when_they_have_none() {
        assert_eq!(with_port("greeter"), "greeter:11999");
        assert_eq!(with_port("greeter:7000"), "greeter:7000");
        assert_eq!(with_port("10.0.0.1"), "10.0.0.1:11999");
        assert_eq!(with_port("127.0.0.1:5"), "127.0.0.1:5");
        assert_eq!(with_port("::1"), "[::1]:11999");
        assert_eq!(with_port("[::1]"), "[::1]:11999");
        assert_eq!(with_port("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn a_list_is_split_on_commas_and_trimmed() {
        assert_eq!(parse_list(" mesh-api, greeter ,,"), ["mesh-api", "greeter"]);
    }

    #[tokio::test]
    async fn names_resolve_to_all_their_addresses() {
        let addrs = resolve(&["localhost:4000".to_owned(), "127.0.0.2".to_owned()]).await;
        assert!(
            addrs.contains(&"127.0.0.1:4000".parse().expect("addr")),
            "{addrs:?}"
        );
        assert!(
            addrs.contains(&"127.0.0.2:11999".parse().expect("addr")),
            "{addrs:?}"
        );
    }
}
