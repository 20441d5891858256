//! `docs/observability.md` lists every metric seawall emits, with the right kind and label, and
//! every `tracing` event message.

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

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// What [`logged_messages`] found in `crates/*/src`.
struct Logged {
    /// Each message, with the file it is in.
    messages: Vec<(String, String)>,
    /// Each call (`name!(`) of a crate's own logging macro, with how many of its calls gave a
    /// message.
    macros: Vec<(String, usize)>,
}

/// The message of every `tracing` event in `crates/*/src`: the string literal that ends a
/// `tracing::<level>!(...)` call, or a call of a macro of the crate's own that hands its
/// arguments on to one (see [`logging_macros`]).
fn logged_messages() -> Logged {
    fn sources(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let crates = concat!(env!("CARGO_MANIFEST_DIR"), "/crates");
    let mut messages = Vec::new();
    let mut macros_found = Vec::new();
    for krate in std::fs::read_dir(crates).unwrap() {
        let src = krate.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        sources(&src, &mut files);
        let texts: Vec<_> = files
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(&file).unwrap();
                let file = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                (file.display().to_string(), text)
            })
            .collect();
        let mut calls: Vec<(String, bool)> = LEVELS
            .iter()
            .map(|level| (format!("tracing::{level}!("), false))
            .collect();
        for (_, text) in &texts {
            calls.extend(logging_macros(text).into_iter().map(|name| (name, true)));
        }
        for (call, own) in calls {
            let mut found = 0;
            for (file, text) in &texts {
                for (at, _) in text.match_indices(&call) {
                    // `once!(` is not the end of `call_once!(`.
                    let before = text[..at].chars().next_back();
                    if own && before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    if let Some(message) = last_literal(&text[at + call.len()..]) {
                        messages.push((file.clone(), message));
                        found += 1;
                    }
                }
            }
            if own {
                macros_found.push((call, found));
            }
        }
    }
    Logged {
        messages,
        macros: macros_found,
    }
}

/// The calls (`name!(`) of the `macro_rules!` macros defined in `text` that hand their arguments
/// on to a `tracing` macro: whose body calls `tracing::<level>!` with a metavariable (`$`) first.
/// Their calls carry the messages, as DNS discovery's `once!` (a warning the first time a lookup
/// fails, then debug) does.
fn logging_macros(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices("macro_rules!") {
        let rest = text[at + "macro_rules!".len()..].trim_start();
        let name: String = rest
            .chars()
            .take_while(|&c| c.is_alphanumeric() || c == '_')
            .collect();
        let Some(open) = rest.find(['{', '(', '[']) else {
            continue;
        };
        // The definition's body, up to the bracket that closes the one it opens with.
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &rest[open..end];
        let forwards = LEVELS.iter().any(|level| {
            let call = format!("tracing::{level}!(");
            body.match_indices(&call)
                .any(|(at, _)| body[at + call.len()..].trim_start().starts_with('$'))
        });
        if !name.is_empty() && forwards {
            names.push(format!("{name}!("));
        }
    }
    names
}

/// The string literal that ends the arguments `args` starts (just inside the opening
/// parenthesis), if one does.
fn last_literal(args: &str) -> Option<String> {
    let mut depth = 0;
    let mut last: Option<String> = None;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => literal.extend(chars.next()),
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                last = Some(literal);
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => return last,
            ')' | ']' | '}' => depth -= 1,
            c if c.is_whitespace() || c == ',' => continue,
            _ => {}
        }
        last = None;
    }
    None
}

#[test]
fn every_tracing_event_is_in_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let (_, events) = doc
        .split_once("## `tracing` events")
        .expect("the doc has a `tracing` events section");
    let events = events.split("\n## ").next().unwrap_or_default();
    // The code spans of the section's table; "`... passed its health check`" ends the message
    // before it.
    let spans: Vec<&str> = events
        .lines()
        .filter(|line| line.starts_with('|'))
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .collect();
    let Logged { messages, macros } = logged_messages();
    assert!(messages.len() > 20, "found only {messages:?}");
    for (call, found) in &macros {
        assert!(
            *found > 0,
            "`{call}` hands its arguments to `tracing`, but no call of it ends in a message"
        );
    }
    for (file, message) in &messages {
        let documented = spans.iter().any(|&span| match span.strip_prefix("... ") {
            Some(end) => message.ends_with(end),
            None => span == message,
        });
        assert!(
            documented,
            "{file} logs {message:?}, which docs/observability.md does not list"
        );
    }
}

/// The module path `tracing` gives a line logged in `file` (`crates/seawall-core/src/event.rs`
/// → `seawall_core::event`).
fn target_of(file: &str) -> String {
    let file = file.trim_start_matches('/').replace('\\', "/");
    let (krate, module) = file
        .strip_prefix("crates/")
        .and_then(|rest| rest.split_once("/src/"))
        .expect("a file under crates/*/src");
    let mut path = vec![krate.replace('-', "_")];
    let module = module.strip_suffix(".rs").unwrap_or(module);
    path.extend(
        module
            .split('/')
            .filter(|&part| part != "lib" && part != "mod" && part != "main")
            .map(str::to_owned),
    );
    path.join("::")
}

/// A line is filtered by its target, and the section says that target is the concern's crate: a
/// line logged by `seawall-core` on a layer's behalf names its target in its row, or a filter on
/// the concern's crate leaves it out unannounced.
#[test]
fn lines_logged_by_the_core_name_their_target() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let (_, events) = doc
        .split_once("## `tracing` events")
        .expect("the doc has a `tracing` events section");
    let events = events.split("\n## ").next().unwrap_or_default();
    let Logged { messages, .. } = logged_messages();
    let core: Vec<_> = messages
        .iter()
        .filter(|(file, _)| target_of(file).starts_with("seawall_core"))
        .collect();
    assert!(!core.is_empty(), "found no line logged by seawall-core");
    for (file, message) in core {
        let target = format!("`{}`", target_of(file));
        let row = events
            .lines()
            .find(|line| line.starts_with('|') && line.contains(&format!("`{message}`")))
            .unwrap_or_else(|| panic!("{message:?} has no row in docs/observability.md"));
        assert!(
            row.contains(&target),
            "the row of {message:?} does not say its target is {target}"
        );
    }
}
