//! `docs/observability.md` lists every metric seawall emits, with the right kind and label, and
//! every `tracing` event message, with its levels and fields; and it lists nothing seawall does
//! not emit.

use seawall::core::metrics::{Kind, ALL, LABEL};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn doc() -> String {
    std::fs::read_to_string(format!("{ROOT}/docs/observability.md")).unwrap()
}

/// The rows of the doc's metric table: name → (kind, labels).
fn documented() -> HashMap<String, (String, String)> {
    let doc = doc();
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

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

#[test]
fn every_metric_is_in_the_table_with_its_kind_and_label() {
    let rows = documented();
    for &(name, kind, _) in ALL {
        let (doc_kind, labels) = rows
            .get(name)
            .unwrap_or_else(|| panic!("{name} is missing from docs/observability.md"));
        assert_eq!(doc_kind, kind_name(kind), "{name}");
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

/// The `.rs` files under `dir`, recursively.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The sources of each crate in `crates/`: (crate directory name, [(file, text)]), the file
/// relative to the workspace root.
fn crate_sources() -> Vec<(String, Vec<(String, String)>)> {
    let mut crates = Vec::new();
    for krate in std::fs::read_dir(format!("{ROOT}/crates")).unwrap() {
        let dir = krate.unwrap().path();
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        sources(&src, &mut files);
        files.sort();
        let texts = files
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(&file).unwrap();
                let file = file.strip_prefix(ROOT).unwrap().display().to_string();
                (file, text)
            })
            .collect();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        crates.push((name, texts));
    }
    crates.sort();
    crates
}

/// The line of byte offset `at` in `text`, from 1.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// The constants of `seawall_core::metrics` that name a metric: constant → metric name.
fn metric_constants() -> HashMap<String, String> {
    let path = format!("{ROOT}/crates/seawall-core/src/metrics.rs");
    let text = std::fs::read_to_string(path).unwrap();
    let mut constants = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((constant, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let value = value.trim_end_matches("\";");
        if value.starts_with("seawall_") {
            constants.insert(constant.to_owned(), value.to_owned());
        }
    }
    constants
}

#[test]
fn every_metric_constant_is_in_all() {
    let constants = metric_constants();
    assert!(constants.len() >= ALL.len(), "found only {constants:?}");
    for (constant, name) in &constants {
        assert!(
            ALL.iter().any(|&(n, _, _)| n == name),
            "seawall_core::metrics::{constant} ({name}) is missing from `ALL`"
        );
    }
}

/// Metrics are registered only through `seawall_core::metrics::{counter, gauge, histogram}` with a
/// constant of that module, never with the `metrics` macros or a name spelled out elsewhere, so
/// `ALL` (and with it the doc's table) sees every one.
#[test]
fn metrics_are_named_only_in_core() {
    let core = format!(
        "crates{}seawall-core{0}src{0}metrics.rs",
        std::path::MAIN_SEPARATOR
    );
    let mut failures = Vec::new();
    for (_, texts) in crate_sources() {
        for (file, text) in &texts {
            if *file == core {
                continue;
            }
            for call in [
                "metrics::counter!",
                "metrics::gauge!",
                "metrics::histogram!",
            ] {
                for (at, _) in text.match_indices(call) {
                    failures.push(format!(
                        "{file}:{} calls `{call}`: use `seawall_core::metrics::{}` with a constant in `ALL`",
                        line_of(text, at),
                        &call["metrics::".len()..call.len() - 1],
                    ));
                }
            }
            for (at, _) in text.match_indices("\"seawall_") {
                let literal: String = text[at + 1..].chars().take_while(|&c| c != '"').collect();
                // A metric name has a concern and a measure; a crate's module path
                // (`seawall_breaker`) has only the concern.
                let shaped = literal
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && literal.matches('_').count() >= 2;
                if shaped {
                    failures.push(format!(
                        "{file}:{} spells out the metric name {literal:?}: use a constant of \
                         `seawall_core::metrics` listed in `ALL`",
                        line_of(text, at),
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every name in `ALL` is registered by a crate other than core, through the helper of its kind.
#[test]
fn every_metric_in_all_is_emitted_with_its_kind() {
    let constants = metric_constants();
    let mut used: BTreeSet<(String, &str)> = BTreeSet::new();
    let mut failures = Vec::new();
    for (krate, texts) in crate_sources() {
        if krate == "seawall-core" {
            continue;
        }
        for (file, text) in &texts {
            for kind in [Kind::Counter, Kind::Gauge, Kind::Histogram] {
                let call = format!("metrics::{}(", kind_name(kind));
                for (at, _) in text.match_indices(&call) {
                    let arg = text[at + call.len()..].trim_start();
                    let arg = arg
                        .strip_prefix("seawall_core::")
                        .unwrap_or(arg)
                        .strip_prefix("metrics::")
                        .unwrap_or(arg);
                    let constant: String = arg
                        .chars()
                        .take_while(|&c| c.is_ascii_alphanumeric() || c == '_')
                        .collect();
                    match constants.get(&constant) {
                        Some(name) => {
                            used.insert((name.clone(), kind_name(kind)));
                        }
                        None => failures.push(format!(
                            "{file}:{} registers a {} that is not a constant of \
                             `seawall_core::metrics`",
                            line_of(text, at),
                            kind_name(kind),
                        )),
                    }
                }
            }
        }
    }
    for &(name, kind, _) in ALL {
        if !used.contains(&(name.to_owned(), kind_name(kind))) {
            let other: Vec<_> = used.iter().filter(|(n, _)| n == name).collect();
            failures.push(format!(
                "{name} is a {} in `ALL`, but no crate registers it as one (as: {other:?})",
                kind_name(kind)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// One message a `tracing` event is given in `crates/*/src`.
#[derive(Debug)]
struct Call {
    /// `file:line`.
    at: String,
    message: String,
    /// The levels it is logged at: one for a `tracing::<level>!` call, those the macro hands its
    /// arguments on to for a call of a crate's own logging macro.
    levels: BTreeSet<&'static str>,
    fields: BTreeSet<String>,
}

/// A crate's own `macro_rules!` macro that hands its arguments on to `tracing`.
struct Forwarder {
    /// `name!(`.
    call: String,
    levels: BTreeSet<&'static str>,
    /// The arguments before the ones it hands on.
    own_args: usize,
}

/// What [`logged_messages`] found in `crates/*/src`.
struct Logged {
    calls: Vec<Call>,
    /// Each of a crate's own logging macros, with how many of its calls gave a message.
    macros: Vec<(String, usize)>,
    /// Logging the test cannot read: calls without a trailing message, `tracing::event!`, level
    /// macros imported by name.
    unreadable: Vec<String>,
}

/// The messages of every `tracing` event in `crates/*/src`: the string literal that ends a
/// `tracing::<level>!(...)` call, or a call of a macro of the crate's own that hands its
/// arguments on to one (see [`logging_macros`]), with the event's levels and fields.
fn logged_messages() -> Logged {
    let mut calls = Vec::new();
    let mut macros_found = Vec::new();
    let mut unreadable = Vec::new();
    for (_, texts) in crate_sources() {
        let mut forwarders: Vec<(Forwarder, bool)> = LEVELS
            .iter()
            .map(|&level| {
                let forwarder = Forwarder {
                    call: format!("tracing::{level}!("),
                    levels: BTreeSet::from([level]),
                    own_args: 0,
                };
                (forwarder, false)
            })
            .collect();
        for (file, text) in &texts {
            forwarders.extend(logging_macros(text).into_iter().map(|f| (f, true)));
            for (at, _) in text.match_indices("tracing::event!") {
                unreadable.push(format!(
                    "{file}:{}: `tracing::event!`; use `tracing::<level>!`",
                    line_of(text, at)
                ));
            }
            for level in LEVELS {
                let call = format!("tracing::{level}!");
                for (at, _) in text.match_indices(&call) {
                    if !text[at + call.len()..].starts_with('(') {
                        unreadable.push(format!(
                            "{file}:{}: write `{call}(` with no space, as the test reads it",
                            line_of(text, at)
                        ));
                    }
                }
            }
            for (at, _) in text.match_indices("use tracing::") {
                let import = &text[at..];
                let import = &import[..import.find(';').unwrap_or(import.len())];
                let names = import.split(|c: char| !(c.is_alphanumeric() || c == '_'));
                if names
                    .into_iter()
                    .any(|n| LEVELS.contains(&n) || n == "event")
                {
                    unreadable.push(format!(
                        "{file}:{}: `{import}` imports a `tracing` macro; call it as \
                         `tracing::<level>!`",
                        line_of(text, at)
                    ));
                }
            }
        }
        for (forwarder, own) in &forwarders {
            let call = &forwarder.call;
            let mut found = 0;
            for (file, text) in &texts {
                for (at, _) in text.match_indices(call.as_str()) {
                    let before = text[..at].chars().next_back();
                    // `once!(` is not the end of `call_once!(`.
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    let place = format!("{file}:{}", line_of(text, at));
                    let Some(mut args) = arguments(&text[at + call.len()..]) else {
                        unreadable.push(format!("{place}: `{call}` is not closed"));
                        continue;
                    };
                    // The call in a logging macro's body that hands its arguments on.
                    if args
                        .get(forwarder.own_args)
                        .is_some_and(|arg| arg.starts_with('$'))
                    {
                        continue;
                    }
                    let Some(message) = args
                        .pop()
                        .and_then(|last| string_literal(&last))
                        .filter(|_| args.len() >= forwarder.own_args)
                    else {
                        unreadable.push(format!(
                            "{place}: `{call}...)` does not end in its message: give values as \
                             fields so the message is a plain string literal"
                        ));
                        continue;
                    };
                    let fields = args[forwarder.own_args..]
                        .iter()
                        .filter_map(|arg| field_name(arg))
                        .collect();
                    calls.push(Call {
                        at: place,
                        message,
                        levels: forwarder.levels.clone(),
                        fields,
                    });
                    found += 1;
                }
            }
            if *own {
                macros_found.push((call.clone(), found));
            }
        }
    }
    Logged {
        calls,
        macros: macros_found,
        unreadable,
    }
}

/// The `macro_rules!` macros defined in `text` that hand their arguments on to a `tracing` macro:
/// whose body calls `tracing::<level>!` with a metavariable (`$`) first. Their calls carry the
/// messages, as DNS discovery's `once!` (a warning the first time a lookup fails, then debug)
/// does.
fn logging_macros(text: &str) -> Vec<Forwarder> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("macro_rules!") {
        let rest = text[at + "macro_rules!".len()..].trim_start();
        let name: String = rest
            .chars()
            .take_while(|&c| c.is_alphanumeric() || c == '_')
            .collect();
        let Some(open) = rest.find(['{', '(', '[']) else {
            continue;
        };
        // The definition, up to the bracket that closes the one it opens with.
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
        let levels: BTreeSet<&str> = LEVELS
            .iter()
            .copied()
            .filter(|level| {
                let call = format!("tracing::{level}!(");
                body.match_indices(&call)
                    .any(|(at, _)| body[at + call.len()..].trim_start().starts_with('$'))
            })
            .collect();
        if name.is_empty() || levels.is_empty() {
            continue;
        }
        // The first rule's matcher: the metavariables before the repetition it hands on.
        let matcher = &body[1..];
        let matcher = &matcher[matcher.find(['(', '[', '{']).unwrap_or(0)..];
        let own_args = matcher[..matcher.find("$(").unwrap_or(0)]
            .matches('$')
            .count();
        found.push(Forwarder {
            call: format!("{name}!("),
            levels,
            own_args,
        });
    }
    found
}

/// The top-level arguments of the call whose arguments `args` starts (just inside the opening
/// parenthesis), up to the parenthesis that closes it; `None` if none does.
fn arguments(args: &str) -> Option<Vec<String>> {
    let mut depth = 0;
    let mut list = Vec::new();
    let mut current = String::new();
    let mut chars = args.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                current.push(c);
                while let Some(c) = chars.next() {
                    current.push(c);
                    match c {
                        '\\' => current.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
                continue;
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => {
                if !current.trim().is_empty() {
                    list.push(current.trim().to_owned());
                }
                return Some(list);
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                list.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    None
}

/// The text of `arg` if it is just a string literal.
fn string_literal(arg: &str) -> Option<String> {
    let inner = arg.strip_prefix('"')?.strip_suffix('"')?;
    let mut literal = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal.extend(chars.next()),
            '"' => return None,
            c => literal.push(c),
        }
    }
    Some(literal)
}

/// The field an argument of a `tracing` macro records: `name = value`, `%name`, `?name`, `name`.
fn field_name(arg: &str) -> Option<String> {
    if arg.starts_with("target:") || arg.starts_with("parent:") {
        return None;
    }
    let name = match arg.find('=') {
        Some(at) if !arg[at + 1..].starts_with(['=', '>']) => &arg[..at],
        _ => arg,
    };
    Some(name.trim().trim_start_matches(['%', '?']).trim().to_owned())
}

/// The code spans of a table cell outside parentheses: the messages (or fields) it names, not the
/// words its notes quote.
fn top_level_spans(cell: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut depth = 0usize;
    // Between backticks (odd parts) is a code span; parentheses count outside them only.
    for (i, part) in cell.split('`').enumerate() {
        if i % 2 == 1 {
            if depth == 0 {
                spans.push(part.to_owned());
            }
            continue;
        }
        for c in part.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    spans
}

/// One message of the doc's `tracing` table.
#[derive(Debug)]
struct Documented {
    /// The message, or its end after "... ".
    message: String,
    levels: BTreeSet<&'static str>,
    /// The fields of its row.
    fields: BTreeSet<String>,
    /// The row, for messages.
    row: String,
}

impl Documented {
    fn names(&self, message: &str) -> bool {
        match self.message.strip_prefix("... ") {
            Some(end) => message.ends_with(end),
            None => self.message == message,
        }
    }
}

/// The levels a level cell gives: the level words outside its notes.
fn levels_in(cell: &str) -> BTreeSet<&'static str> {
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(|c: char| !c.is_alphabetic())
        .filter_map(|word| LEVELS.iter().copied().find(|&l| l == word))
        .collect()
}

/// The rows of the doc's `tracing` table, one entry per message. A level cell gives one set of
/// levels for every message of its row ("warn, then debug": each is logged at both), or one per
/// message ("debug / warn"), and a note "(word: level)" gives the level of the message with that
/// word ("debug (won: trace)").
fn documented_events() -> Vec<Documented> {
    let doc = doc();
    let (_, events) = doc
        .split_once("## `tracing` events")
        .expect("the doc has a `tracing` events section");
    let events = events.split("\n## ").next().unwrap_or_default();
    let mut documented = Vec::new();
    for line in events.lines().filter(|line| line.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "a row of four cells: {line}");
        if cells[2] == "level" || cells[2].starts_with("---") {
            continue;
        }
        let messages = top_level_spans(cells[3]);
        assert!(!messages.is_empty(), "no message in {line}");
        let fields: BTreeSet<String> = top_level_spans(cells[4]).into_iter().collect();
        let alternatives: Vec<&str> = cells[2].split(" / ").collect();
        assert!(
            alternatives.len() == 1 || alternatives.len() == messages.len(),
            "{line}: give one level cell for all messages or one per message"
        );
        // Notes "(word: level)".
        let mut overrides = Vec::new();
        for note in cells[2].split('(').skip(1) {
            let note = note.split(')').next().unwrap_or_default();
            if let Some((word, level)) = note.split_once(": ") {
                let level = LEVELS
                    .iter()
                    .copied()
                    .find(|&l| l == level.trim())
                    .unwrap_or_else(|| panic!("{line}: {level:?} is not a level"));
                overrides.push((word.trim().to_owned(), level));
            }
        }
        for (i, message) in messages.into_iter().enumerate() {
            let mut levels = levels_in(alternatives[i.min(alternatives.len() - 1)]);
            for (word, level) in &overrides {
                if message.split_whitespace().any(|w| w == word) {
                    levels = BTreeSet::from([*level]);
                }
            }
            assert!(!levels.is_empty(), "{line}: no level for {message:?}");
            documented.push(Documented {
                message,
                levels,
                fields: fields.clone(),
                row: line.to_owned(),
            });
        }
    }
    documented
}

#[test]
fn every_tracing_event_is_in_the_table_with_its_levels_and_fields() {
    let documented = documented_events();
    let Logged {
        calls,
        macros,
        unreadable,
    } = logged_messages();
    assert!(unreadable.is_empty(), "{}", unreadable.join("\n"));
    assert!(calls.len() > 20, "found only {calls:?}");
    for (call, found) in &macros {
        assert!(
            *found > 0,
            "`{call}` hands its arguments to `tracing`, but no call of it ends in a message"
        );
    }
    let mut failures = Vec::new();
    for call in &calls {
        let rows: Vec<&Documented> = documented
            .iter()
            .filter(|d| d.names(&call.message))
            .collect();
        if rows.is_empty() {
            failures.push(format!(
                "{} logs {:?}, which docs/observability.md does not list",
                call.at, call.message
            ));
            continue;
        }
        let levels: BTreeSet<_> = rows.iter().flat_map(|d| &d.levels).collect();
        for level in &call.levels {
            if !levels.contains(level) {
                failures.push(format!(
                    "{} logs {:?} at {level}, but docs/observability.md gives {levels:?}",
                    call.at, call.message
                ));
            }
        }
        let fields: BTreeSet<_> = rows.iter().flat_map(|d| &d.fields).collect();
        for field in &call.fields {
            if !fields.contains(field) {
                failures.push(format!(
                    "{} logs {:?} with the field `{field}`, which docs/observability.md does not \
                     list for it",
                    call.at, call.message
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_tracing_table_lists_no_event_or_level_or_field_that_is_not_logged() {
    let documented = documented_events();
    let Logged { calls, .. } = logged_messages();
    let mut failures = Vec::new();
    for entry in &documented {
        let logged: Vec<&Call> = calls.iter().filter(|c| entry.names(&c.message)).collect();
        if logged.is_empty() {
            failures.push(format!(
                "docs/observability.md lists {:?}, which no `tracing` call in crates/*/src logs",
                entry.message
            ));
            continue;
        }
        for level in &entry.levels {
            if !logged.iter().any(|c| c.levels.contains(level)) {
                failures.push(format!(
                    "docs/observability.md gives {:?} at {level}, but it is logged only at {:?}",
                    entry.message,
                    logged
                        .iter()
                        .flat_map(|c| &c.levels)
                        .collect::<BTreeSet<_>>()
                ));
            }
        }
    }
    // A row's fields are shared by its messages.
    let mut rows: Vec<&str> = documented.iter().map(|d| d.row.as_str()).collect();
    rows.dedup();
    for row in rows {
        let entries: Vec<&Documented> = documented.iter().filter(|d| d.row == row).collect();
        for field in &entries[0].fields {
            let given = calls
                .iter()
                .any(|c| c.fields.contains(field) && entries.iter().any(|d| d.names(&c.message)));
            if !given {
                failures.push(format!(
                    "docs/observability.md gives the field `{field}` in {row}, but no call \
                     logging its messages records it"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
    let Logged { calls, .. } = logged_messages();
    let core: Vec<_> = calls
        .iter()
        .map(|call| {
            let (file, _line) = call.at.rsplit_once(':').expect("`file:line`");
            (file, &call.message)
        })
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
