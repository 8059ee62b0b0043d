//! Dependencies point one way: no import cycle among the crate's top-level modules (each file or
//! folder under `src/`), read from the `crate::` paths in the sources. A cycle means two parts
//! can only be understood, tested and changed together; the message names the modules and the
//! files that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that may import config: the wiring that turns it into the components' settings, and
/// the command line, which reads it to act on one client.
const READ_CONFIG: &[&str] = &["daemon", "cli"];

/// Which top-level module each `crate::` path in `src/` names, per importing module, with the
/// file that does it.
fn imports() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (at, _) in code.match_indices("crate::") {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && name != "proto" {
                    edges.entry(name).or_insert_with(|| relative.to_path_buf());
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if any: the modules in order.
fn cycle_from(
    graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
    start: &str,
) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in graph.get(&here).into_iter().flat_map(|e| e.keys()) {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 10, "read the modules of src/: {graph:?}");
    // Each cycle once, starting at its first module in name order.
    let found: BTreeSet<Vec<String>> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|mut cycle| {
            let first = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap();
            cycle.rotate_left(first);
            cycle
        })
        .collect();
    let cycles: Vec<String> = found
        .into_iter()
        .map(|cycle| {
            let hops: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(from, to)| format!("{from} -> {to} ({})", graph[from][to].display()))
                .collect();
            hops.join(", ")
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn only_the_wiring_and_the_command_line_read_the_config() {
    let graph = imports();
    let readers: Vec<String> = graph
        .iter()
        .filter(|(module, edges)| {
            edges.contains_key("config") && !READ_CONFIG.contains(&module.as_str())
        })
        .map(|(module, edges)| format!("{module} ({})", edges["config"].display()))
        .collect();
    assert!(
        readers.is_empty(),
        "components that import config instead of owning their settings: {readers:?}"
    );
}

#[test]
fn metrics_is_a_leaf() {
    let graph = imports();
    let metrics = &graph["metrics"];
    assert!(
        metrics.is_empty(),
        "metrics should take plain labels, but imports: {metrics:?}"
    );
}
