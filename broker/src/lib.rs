//! The sluice broker: named bounded queues behind a gRPC API.
//!
//! The folders stack the way a request travels (docs/architecture.md):
//! - [`api`]: the only code that speaks protobuf — unary handlers, the
//!   Consume and Publish stream sessions, WatchJob, auth, and turning wire
//!   messages into domain values within the limits;
//! - [`broker`]: the async runtime around the engine — the queues, the
//!   effect executor (where an engine call's changes become log records and
//!   then effects), the waiting operations, the memory budget, compaction,
//!   timers; and [`jobs`], the job registry, and [`schedules`], the
//!   schedule registry;
//! - [`engine`]: the sans-I/O state machine of one queue (its own crate);
//! - [`wal`]: what durable queues log and how a restart replays it, on
//!   [`storage`], the segmented log.
//!
//! Beside them: [`error`] (one error type, one mapping to gRPC status),
//! [`limits`], [`ids`], [`lease`], [`latency`] and [`metrics`]; [`server`]
//! puts the API on a listener; `main.rs` only parses [`args`] and
//! [`config`]. A test (`layers` below) checks that no module reaches up.

pub mod api;
pub mod args;
pub mod broker;
pub mod cluster;
pub mod config;
/// The queue engine, its own crate (`broker/engine`), read here as
/// `crate::engine`.
pub use sluice_engine as engine;
pub mod error;
pub mod ids;
pub mod jobs;
pub mod journal;
pub mod latency;
pub mod lease;
pub mod limits;
pub mod member;
pub mod metrics;
pub mod schedules;
pub mod server;
pub mod signal;
pub mod storage;
pub mod tls;
pub mod wal;
pub mod web;

/// The layering, checked: every top-level module may use only modules of
/// a lower layer (`crate::x` paths, tests excepted), so there are no import
/// cycles and nothing reaches up. A new module must be given its layer
/// here; a use that breaks the order fails this test with the file at
/// fault.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// (module, layer): lower layers know nothing of higher ones.
    const LAYERS: &[(&str, u8)] = &[
        ("engine", 0),
        ("ids", 1),
        ("latency", 1),
        ("limits", 1),
        ("signal", 1),
        ("tls", 1),
        ("lease", 2),
        ("storage", 2),
        ("error", 3),
        ("wal", 3),
        ("cluster", 3),
        ("journal", 4),
        ("jobs", 5),
        ("schedules", 5),
        ("broker", 6),
        ("api", 7),
        ("metrics", 7),
        ("member", 7),
        ("server", 8),
        ("web", 8),
        ("args", 8),
        ("config", 9),
    ];

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// The non-test source of a file: up to its first `#[cfg(test)]`.
    fn code(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_owned(),
            None => text,
        }
    }

    fn files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                files(&entry.path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path.to_path_buf());
        }
    }

    /// Inside a folder, the same rule between its files: (folder, its
    /// files' layers; `mod.rs` and `tests.rs` are above them all). `broker/` is not here: its files are `impl Broker`
    /// blocks of one type, split by concern, not layers.
    const INNER: &[(&str, &[(&str, u8)])] = &[
        (
            "api",
            &[
                ("validate", 0),
                ("auth", 1),
                ("info", 1),
                ("leader", 1),
                ("reply", 1),
                ("watch", 2),
                ("consume", 2),
                ("publish", 2),
                ("service", 3),
            ],
        ),
        (
            "storage",
            &[
                ("error", 0),
                ("format", 0),
                ("lock", 1),
                ("options", 1),
                ("segment", 2),
                ("stats", 3),
                ("recovery", 3),
                ("writer", 4),
            ],
        ),
        (
            "wal",
            &[("encode", 0), ("codec", 1), ("open", 2), ("replicated", 2)],
        ),
        (
            "cluster",
            &[
                ("convert", 0),
                ("stats", 0),
                ("network", 1),
                ("proposer", 1),
                ("log_store", 1),
                ("machine", 1),
                ("service", 2),
            ],
        ),
    ];

    /// The first path segment of every item `text` names after `prefix`
    /// (`prefix::a::b` gives `a`; `prefix::{a, b::c}` gives `a` and `b`).
    fn used_after(text: &str, prefix: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for (i, _) in text.match_indices(prefix) {
            // `super::` inside `crate::x::super::`-like text is not ours.
            if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[i + prefix.len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    out.extend(group.split(',').map(ident));
                }
                None => out.push(ident(rest)),
            }
        }
        out.retain(|u| !u.is_empty() && u != "self");
        out
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = Vec::new();
        let Ok(entries) = std::fs::read_dir(&src) else {
            panic!("cannot read {}", src.display());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if matches!(name.as_str(), "lib" | "main") {
                continue;
            }
            let Some(own) = layer(&name) else {
                problems.push(format!("module {name} has no layer in LAYERS"));
                continue;
            };
            let mut sources = Vec::new();
            files(&path, &mut sources);
            for file in sources {
                let text = code(&file);
                for (i, _) in text.match_indices("crate::") {
                    let used: String = text[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if used == name || used.is_empty() {
                        continue;
                    }
                    match layer(&used) {
                        Some(l) if l < own => {}
                        _ => problems.push(format!(
                            "{} uses crate::{used}, which is not below {name}",
                            file.display()
                        )),
                    }
                }
            }
        }
        problems.sort();
        problems.dedup();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn no_file_in_a_folder_uses_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = Vec::new();
        for (folder, table) in INNER {
            let layer = |m: &str| table.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
            let Ok(entries) = std::fs::read_dir(src.join(folder)) else {
                panic!("cannot read src/{folder}");
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                // mod.rs is the folder's face, above all of it.
                if matches!(name, "mod" | "tests") {
                    continue;
                }
                let Some(own) = layer(name) else {
                    problems.push(format!("src/{folder}/{name}.rs has no layer in INNER"));
                    continue;
                };
                let text = code(&path);
                let mut used = used_after(&text, "super::");
                used.extend(used_after(&text, &format!("crate::{folder}::")));
                for u in used {
                    // Items of the folder's face (mod.rs), not a file.
                    let Some(l) = layer(&u) else { continue };
                    if u != name && l >= own {
                        problems.push(format!(
                            "src/{folder}/{name}.rs uses {u}, which is not below it"
                        ));
                    }
                }
            }
        }
        problems.sort();
        problems.dedup();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn used_paths_are_read_through_groups() {
        let text = "use super::{a::X, b}; use crate::api::c::Y; x::super::d";
        assert_eq!(used_after(text, "super::"), ["a", "b"]);
        assert_eq!(used_after(text, "crate::api::"), ["c"]);
    }
}
