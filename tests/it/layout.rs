//! The library's layout: its top-level modules import each other without a cycle, so each
//! can be read (and tested) from the rules outwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module each `src/` file belongs to, and the modules it names as
/// `crate::<module>` outside its tests.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let named = code
                .match_indices("crate::")
                .map(|(at, _)| {
                    code[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .filter(|m| !m.is_empty() && *m != module)
                .collect::<Vec<_>>();
            graph.entry(module).or_default().extend(named);
        }
    }
    graph
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(graph.contains_key("domain") && graph.contains_key("http"));
    assert!(
        graph["domain"].is_empty(),
        "domain has no I/O: {:?}",
        graph["domain"]
    );
    // Depth-first search for a path that comes back to where it started.
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(from) = path.iter().position(|m| m == at) {
            panic!("import cycle: {} -> {at}", path[from..].join(" -> "));
        }
        if !done.insert(at.to_owned()) {
            return;
        }
        path.push(at.to_owned());
        for next in graph.get(at).into_iter().flatten() {
            visit(graph, next, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(&graph, module, &mut Vec::new(), &mut done);
    }
}
