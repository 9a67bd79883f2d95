//! The host's modules form layers (ARCHITECTURE.md, "host/"): each imports only from its own row
//! or the rows below it, and the graph of `crate::` references has no cycle. This reads the
//! sources, so a new import that climbs a layer fails here rather than in a reviewer's head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The diagram in ARCHITECTURE.md, lowest row first. A module must appear here to exist.
const LAYERS: &[&[&str]] = &[
    &["api", "units"],
    &["model_file", "pages", "notify", "synth", "config"],
    &["placement", "events"],
    &["supervisor"],
    &["registry"],
    &["gateway"],
    &["control"],
    &["cli", "daemon", "client"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// Every top-level module named after `crate::` in `source`, including those inside
/// `use crate::{a::X, b::{Y, Z}}` groups (only the group's outermost names count).
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (index, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[index..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_lowercase() || c == '_') => {
                        found.insert(leading_identifier(&group[index..]).to_owned());
                        item_start = false;
                    }
                    c if !c.is_whitespace() => item_start = false,
                    _ => {}
                }
            }
        } else {
            let name = leading_identifier(rest);
            if !name.is_empty() {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

fn leading_identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

fn collect(dir: &Path, src_root: &Path, graph: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(&path, src_root, graph);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let relative = path.strip_prefix(src_root).expect("under src");
        let first = relative.components().next().expect("a component");
        let top = first.as_os_str().to_str().expect("utf-8 name");
        let top = top.strip_suffix(".rs").unwrap_or(top).to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read source");
        let references = graph.entry(top.clone()).or_default();
        references.extend(crate_references(&source).into_iter().filter(|m| *m != top));
    }
}

fn host_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    collect(&src, &src, &mut graph);
    graph
}

#[test]
fn the_reference_scanner_reads_groups_and_paths() {
    let source =
        "use crate::api::{A, B};\nuse crate::{events::{Bus, Event}, pages,\n  units::Bytes};\n\
                  fn f() { crate::placement::plan(); }";
    let found: Vec<String> = crate_references(source).into_iter().collect();
    assert_eq!(found, ["api", "events", "pages", "placement", "units"]);
}

#[test]
fn every_module_sits_in_a_layer_and_imports_only_from_its_row_or_below() {
    let graph = host_graph();
    assert!(
        graph.contains_key("api") && graph.contains_key("registry"),
        "{graph:?}"
    );
    let mut breaches = Vec::new();
    for (module, references) in &graph {
        let Some(own) = layer_of(module) else {
            breaches.push(format!(
                "{module} is in no layer of ARCHITECTURE.md's diagram"
            ));
            continue;
        };
        for reference in references {
            match layer_of(reference) {
                Some(theirs) if theirs <= own => {}
                Some(_) => breaches.push(format!("{module} imports {reference}, a higher layer")),
                None => breaches.push(format!("{module} names crate::{reference}, in no layer")),
            }
        }
    }
    assert!(breaches.is_empty(), "{}", breaches.join("\n"));
    assert!(graph["api"].is_empty(), "api/ imports {:?}", graph["api"]);
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = host_graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            return Err(format!("{} -> {module}", path[at..].join(" -> ")));
        }
        if done.contains(module) {
            return Ok(());
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done)?;
        }
        path.pop();
        done.insert(module);
        Ok(())
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done).expect("a cycle among host modules");
    }
}
