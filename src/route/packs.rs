//! Route packs: ready route tables for Superset, Grafana and Datasette, shipped inside the
//! binary (`deploy/route-packs/*.yaml`) and selected with `routes.packs`. Read once when
//! the route table is compiled; their routes are checked exactly like `routes.table`.

use super::config::RouteConfig;

/// Every pack, by name.
pub const PACKS: [(&str, &str); 3] = [
    (
        "superset",
        include_str!("../../deploy/route-packs/superset.yaml"),
    ),
    (
        "grafana",
        include_str!("../../deploy/route-packs/grafana.yaml"),
    ),
    (
        "datasette",
        include_str!("../../deploy/route-packs/datasette.yaml"),
    ),
];

/// The routes of the pack called `name`.
pub fn routes(name: &str) -> Result<Vec<RouteConfig>, String> {
    let (_, text) = PACKS
        .iter()
        .find(|(pack, _)| *pack == name)
        .ok_or_else(|| {
            let known: Vec<&str> = PACKS.iter().map(|(pack, _)| *pack).collect();
            format!("unknown route pack `{name}` (known: {})", known.join(", "))
        })?;
    serde_yaml::from_str(text).map_err(|error| format!("route pack `{name}`: {error}"))
}
