//! Stage 3 (route resolution), before any template is matched: which routes could match a
//! path at all, found by its first segments instead of by trying every route.
//!
//! The shipped Superset pack has 379 routes, and resolution tried each one's method and
//! template on every request (see README *Benchmarks*, route resolution). A route can
//! only match a path whose first segments equal the route's leading literal segments, so
//! the routes are filed in a trie under those literals (up to [`DEPTH`] of them): a path
//! collects the routes filed at the root and at each node its own decoded segments
//! reach. Every route that can match is among them; [`super::RouteTable::resolve`] then
//! ranks them exactly as before, lower table index winning a tie.

use std::collections::HashMap;

/// How many leading literal segments a route is filed under. Superset's API is
/// `/api/v1/<resource>/…`: three literals narrow 379 routes to the few of one resource.
const DEPTH: usize = 3;

#[derive(Debug, Clone, Default)]
struct Node {
    /// Table indices of the routes whose leading literals end at this node.
    routes: Vec<usize>,
    children: HashMap<Box<[u8]>, Node, foldhash::fast::RandomState>,
}

/// Routes by their leading literal segments.
#[derive(Debug, Clone, Default)]
pub(super) struct RouteIndex {
    root: Node,
}

impl RouteIndex {
    /// Files route `index` under its leading literal segments (only the first [`DEPTH`]
    /// count; a route with none is filed at the root and tried for every path).
    pub(super) fn insert<'l>(
        &mut self,
        index: usize,
        leading_literals: impl Iterator<Item = &'l [u8]>,
    ) {
        let mut node = &mut self.root;
        for literal in leading_literals.take(DEPTH) {
            node = node.children.entry(literal.into()).or_default();
        }
        node.routes.push(index);
    }

    /// The routes that could match a path with these decoded segments, in no particular
    /// order, appended to `candidates`.
    pub(super) fn candidates<S: AsRef<[u8]>>(
        &self,
        segments: &[S],
        candidates: &mut impl Extend<usize>,
    ) {
        let mut node = &self.root;
        candidates.extend(node.routes.iter().copied());
        for segment in segments.iter().take(DEPTH) {
            let Some(child) = node.children.get(segment.as_ref()) else {
                return;
            };
            node = child;
            candidates.extend(node.routes.iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates_of(index: &RouteIndex, path: &[&str]) -> Vec<usize> {
        let mut found = Vec::new();
        index.candidates(path, &mut found);
        found.sort_unstable();
        found
    }

    #[test]
    fn a_path_reaches_the_routes_filed_along_its_first_segments() {
        let mut index = RouteIndex::default();
        let file = |index: &mut RouteIndex, position: usize, literals: &[&str]| {
            index.insert(position, literals.iter().map(|literal| literal.as_bytes()));
        };
        file(&mut index, 0, &[]); // `/{db}.json`
        file(&mut index, 1, &["api", "v1", "chart"]); // `/api/v1/chart/{pk}`
        file(&mut index, 2, &["api", "v1", "chart", "data"]); // filed at depth 3 too
        file(&mut index, 3, &["api", "v1", "dashboard"]);
        file(&mut index, 4, &["api"]); // `/api/{*rest}`
        assert_eq!(
            candidates_of(&index, &["api", "v1", "chart", "data"]),
            [0, 1, 2, 4]
        );
        assert_eq!(
            candidates_of(&index, &["api", "v1", "dashboard", "1"]),
            [0, 3, 4]
        );
        assert_eq!(candidates_of(&index, &["api", "v2"]), [0, 4]);
        assert_eq!(candidates_of(&index, &["static", "app.js"]), [0]);
        assert_eq!(candidates_of(&index, &[]), [0]);
    }
}
