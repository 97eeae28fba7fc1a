//! README stays true to the code: every variable the settings read is in
//! its table (and nothing else), and the quick-start command works as
//! written.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ::gitreload::settings::{LEGACY_VARIABLES, VARIABLES};
use support::*;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The first column of every row of the Configuration table that names a
/// variable.
fn documented_variables(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("\n## Configuration")
        .expect("a Configuration section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `GITRELOAD_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("GITRELOAD_{name}"))
        .collect()
}

#[test]
fn readme_table_lists_exactly_the_variables_the_code_reads() {
    let documented = documented_variables(&readme());
    let read: BTreeSet<String> = VARIABLES.iter().map(|v| format!("GITRELOAD_{v}")).collect();
    let missing: Vec<_> = read.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&read).collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in README's table: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in README's table but not read by the code: {extra:?}"
    );
}

#[test]
fn readme_documents_every_legacy_variable() {
    let text = readme();
    for v in LEGACY_VARIABLES {
        assert!(text.contains(&format!("`{v}`")), "{v} is not in README");
    }
}

/// The shell command of the first ```sh block after `heading`.
fn command_after(readme: &str, heading: &str) -> String {
    let section = &readme[readme.find(heading).expect("heading")..];
    let start = section.find("```sh\n").expect("sh block") + 6;
    let end = section[start..].find("```").unwrap() + start;
    section[start..end].trim().to_string()
}

#[test]
fn readme_quick_start_deploys_the_example_config() {
    let command = command_after(&readme(), "## Quick start");
    assert!(
        command.contains("cargo run --release -- --once"),
        "{command}"
    );
    // The same binary the tests build, instead of a second (release) build.
    let demo = tempfile::TempDir::new().unwrap();
    let command = command
        .replace("cargo run --release --", Gitreload::binary())
        .replace("/tmp/gitreload-demo", demo.path().to_str().unwrap());
    let mut cmd = clean_command("bash");
    cmd.args(["-c", &command])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", demo.path());
    let log = demo.path().join("quickstart.log");
    let mut run = ChildGuard::spawn("quick start", &mut cmd, &log);
    let status = run
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("quick start still running\n{}", run.log_tail(30)));
    assert!(
        status.success(),
        "quick start failed:\n{}",
        run.log_tail(30)
    );
    let config = demo.path().join("config");
    let prometheus = std::fs::read_to_string(config.join("prometheus.yml")).unwrap();
    assert!(
        prometheus.contains("tasks.alertmanager"),
        "not the example config"
    );
    assert!(config.join("rules").is_dir());
    // The example config is valid where it lands, rules included.
    let out = clean_command("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The text of the README section that starts with `heading`.
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?} section"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The figure templates of benches/pipeline.rs (its `FIGURES` list), after
/// checking that every row the bench reports is named through that list.
fn bench_figures(source: &str) -> Vec<String> {
    for call in [".sample(", ".single("] {
        for (at, _) in source.match_indices(call) {
            assert!(
                source[at + call.len()..]
                    .trim_start()
                    .starts_with("&figure("),
                "a bench row not named through FIGURES: {}",
                &source[at..(at + 120).min(source.len())]
            );
        }
    }
    let start = source
        .find("const FIGURES: &[&str] = &[\n")
        .expect("benches/pipeline.rs has no FIGURES list");
    let list = &source[start..];
    let list = &list[..list.find("\n];").expect("FIGURES is not closed")];
    let figures: Vec<String> = list
        .lines()
        .skip(1)
        .map(|l| {
            l.trim()
                .strip_prefix('"')
                .and_then(|l| l.strip_suffix("\","))
                .unwrap_or_else(|| panic!("not a plain string in FIGURES: {l}"))
                .to_string()
        })
        .collect();
    assert!(figures.len() > 10, "{figures:?}");
    for (at, _) in source.match_indices("&figure(") {
        let named = source[at + "&figure(".len()..]
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split('"').next())
            .expect("a figure named by a string literal");
        assert!(
            figures.iter().any(|f| f == named),
            "the bench names a row {named:?} that FIGURES does not list"
        );
    }
    figures
}

/// The first cell of a table row, as the bench printed it (`| {figure} |`).
fn figure_name(row: &str) -> &str {
    let cells = row.strip_prefix("| ").expect("a table row");
    &cells[..cells.find(" | ").expect("a table row")]
}

/// `name` is `template` with each `{part}` filled in by some non-empty text
/// without `|`.
fn names_figure(template: &str, name: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        literals.push(&rest[..open]);
        let close = rest[open..].find('}').expect("an unclosed {part}") + open;
        rest = &rest[close + 1..];
    }
    literals.push(rest);
    let Some(mut tail) = name.strip_prefix(literals[0]) else {
        return false;
    };
    let hole = |text: &str| !text.is_empty() && !text.contains('|');
    let (last, middle) = literals[1..].split_last().unwrap_or((&"", &[]));
    if literals.len() == 1 {
        return tail.is_empty();
    }
    for literal in middle {
        // A part fills at least one character before the next literal.
        let Some(first) = tail.chars().next() else {
            return false;
        };
        let skip = first.len_utf8();
        let Some(at) = tail[skip..].find(literal).map(|i| i + skip) else {
            return false;
        };
        if !hole(&tail[..at]) {
            return false;
        }
        tail = &tail[at + literal.len()..];
    }
    tail.len() > last.len() && tail.ends_with(last) && hole(&tail[..tail.len() - last.len()])
}

#[test]
fn readme_benchmark_table_is_the_bench_output_with_a_verdict_for_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = readme();
    let bench = section(&readme, "## Benchmarks");
    assert!(
        bench.contains("cargo bench --bench pipeline"),
        "the command is not in README"
    );
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("[[bench]]\nname = \"pipeline\"\nharness = false"),
        "Cargo.toml has no harness-less `pipeline` bench"
    );
    // The table is what the bench prints: same header, one row per figure.
    let source = std::fs::read_to_string(root.join("benches/pipeline.rs")).unwrap();
    let header = "| figure | median | p95 | min | max | n | target | |";
    assert!(source.contains(header), "the bench prints another table");
    assert!(
        bench.contains(header),
        "README shows no table from the bench"
    );
    assert!(
        bench.contains("vCPUs") && bench.contains("Linux"),
        "README does not describe the machine"
    );
    let rows: Vec<&str> = bench
        .lines()
        .skip_while(|l| *l != header)
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    // Row names: every row of README's table is a figure the bench names,
    // and every figure it names has a row.
    let figures = bench_figures(&source);
    for row in &rows {
        let name = figure_name(row);
        assert!(
            figures.iter().any(|t| names_figure(t, name)),
            "README's row {name:?} is not a figure the bench prints"
        );
    }
    for template in &figures {
        assert!(
            rows.iter().any(|r| names_figure(template, figure_name(r))),
            "README has no row for the bench's figure {template:?}"
        );
    }
    for target in [
        "median < 100 ms",
        "median < 100 ms + promtool",
        "median < 700 ms",
        "< 2 ms",
        "< 10 MB",
        "median < 200 ms",
        "median < 50 ms",
        "median ≤ healthy-100 median",
    ] {
        let with_target: Vec<&&str> = rows.iter().filter(|r| r.contains(target)).collect();
        assert!(!with_target.is_empty(), "no row for the target {target:?}");
        for row in with_target {
            assert!(
                row.ends_with("| hit |") || row.ends_with("| **miss** |"),
                "a row with a target but no verdict: {row}"
            );
        }
    }
    // A miss is explained.
    if rows.iter().any(|r| r.contains("**miss**")) {
        assert!(
            bench.contains("what bounds"),
            "README reports a miss without saying what bounds it"
        );
    }
}
