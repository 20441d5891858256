//! `docs/observability.md` lists every metric seawall emits, with the right kind and label.

use seawall::core::metrics::{Kind, ALL, LABEL};
use std::collections::HashMap;

/// The rows of the doc's metric table: name → (kind, labels).
fn documented() -> HashMap<String, (String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let mut rows = HashMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `name` | kind | labels | meaning |" splits into 6 cells, empty at both ends.
        if cells.len() != 6 {
            continue;
        }
        let Some(name) = cells[1]
            .strip_prefix("`seawall_")
            .and_then(|n| n.strip_suffix('`'))
        else {
            continue;
        };
        assert!(
            !cells[4].is_empty(),
            "seawall_{name} has no meaning in the doc"
        );
        let previous = rows.insert(
            format!("seawall_{name}"),
            (cells[2].to_owned(), cells[3].to_owned()),
        );
        assert!(previous.is_none(), "seawall_{name} is in the table twice");
    }
    rows
}

#[test]
fn every_metric_is_in_the_table_with_its_kind_and_label() {
    let rows = documented();
    for &(name, kind, _) in ALL {
        let (doc_kind, labels) = rows
            .get(name)
            .unwrap_or_else(|| panic!("{name} is missing from docs/observability.md"));
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(doc_kind, kind, "{name}");
        assert_eq!(labels, &format!("`{LABEL}`"), "{name}");
    }
}

#[test]
fn the_table_names_no_metric_that_does_not_exist() {
    for name in documented().keys() {
        assert!(
            ALL.iter().any(|&(n, _, _)| n == name),
            "docs/observability.md lists {name}, which seawall does not emit"
        );
    }
}
