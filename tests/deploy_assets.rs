//! The shipped assets are correct without a Docker engine: every YAML
//! parses, the Swarm stack and the Kubernetes example only use variables
//! the binary knows and only reference what they define, the configs and
//! rules pass promtool and amtool, and the Dockerfile has its essentials.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ::gitreload::settings::VARIABLES;
use serde_yaml::Value;
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    value.apply_merge().unwrap();
    value
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

fn known_variable(name: &str) -> bool {
    name.strip_prefix("GITRELOAD_")
        .is_some_and(|rest| VARIABLES.contains(&rest))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn run_ok(program: &str, args: &[&str], dir: &Path) {
    let out = clean_command(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_yaml_in_deploy_and_workflows_parses() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    yaml_files(&root().join(".github"), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for f in files {
        assert!(!yaml_documents(&f).is_empty(), "{} is empty", f.display());
    }
}

#[test]
fn swarm_stack_references_only_what_it_defines_and_what_gitreload_reads() {
    let stack = yaml(&root().join("deploy/stack.yml"));
    let volumes = keys(&stack["volumes"]);
    let networks = keys(&stack["networks"]);
    let secrets = keys(&stack["secrets"]);
    let services = stack["services"].as_mapping().unwrap();
    let mut names: BTreeSet<String> = keys(&stack["services"]);
    let mut gitreloads = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume["source"]
                .as_str()
                .map(String::from)
                .or_else(|| {
                    volume
                        .as_str()
                        .map(|v| v.split(':').next().unwrap().to_string())
                })
                .unwrap();
            if volume["type"].as_str().unwrap_or("volume") == "volume" {
                assert!(
                    volumes.contains(&source),
                    "{name}: volume {source} is not defined"
                );
            }
        }
        let service_networks: BTreeSet<String> = match &service["networks"] {
            Value::Sequence(list) => list
                .iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect(),
            other => keys(other),
        };
        for network in &service_networks {
            assert!(
                networks.contains(network),
                "{name}: network {network} is not defined"
            );
            for alias in service["networks"][network.as_str()]["aliases"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                names.insert(alias.as_str().unwrap().to_string());
            }
        }
        let given: BTreeSet<String> = service["secrets"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|s| s["source"].as_str().or(s.as_str()).unwrap().to_string())
            .collect();
        for secret in &given {
            assert!(
                secrets.contains(secret),
                "{name}: secret {secret} is not defined"
            );
        }
        if !service["image"]
            .as_str()
            .unwrap_or("")
            .contains("gitreload")
        {
            continue;
        }
        gitreloads += 1;
        let env = service["environment"]
            .as_mapping()
            .expect("environment as a map");
        for (key, value) in env {
            let key = key.as_str().unwrap();
            assert!(
                known_variable(key),
                "{name}: {key} is not a variable gitreload reads"
            );
            let value = value.as_str().unwrap_or("");
            if key.ends_with("_FILE") {
                let secret = value
                    .strip_prefix("/run/secrets/")
                    .unwrap_or_else(|| panic!("{name}: {key} is not a Docker secret"));
                assert!(
                    given.contains(secret),
                    "{name}: {key} names secret {secret} the service does not get"
                );
            }
        }
        assert!(
            env.get("GITRELOAD_DEST").is_some(),
            "{name}: no GITRELOAD_DEST"
        );
        let targets = env
            .get("GITRELOAD_TARGETS")
            .and_then(|v| v.as_str())
            .expect("targets");
        for url in targets.split(',') {
            let host = url.trim_start_matches("http://").split(':').next().unwrap();
            let service_name = host
                .strip_prefix("tasks.")
                .expect("targets use tasks.<service>");
            assert!(
                names.contains(service_name),
                "{name}: target {host} names no service or alias"
            );
        }
        // The destination volume is the application's config volume.
        let dest = env["GITRELOAD_DEST"].as_str().unwrap();
        let dest_volume = service["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["target"].as_str() == Some(dest))
            .and_then(|v| v["source"].as_str())
            .expect("a volume mounted at GITRELOAD_DEST");
        let shared = services.iter().any(|(other, s)| {
            other.as_str() != Some(name)
                && s["volumes"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|v| v["source"].as_str() == Some(dest_volume))
        });
        assert!(
            shared,
            "{name}: {dest_volume} is not shared with the application"
        );
    }
    assert_eq!(
        gitreloads, 2,
        "a sidecar for Prometheus and one for Alertmanager"
    );
}

#[test]
fn kubernetes_example_uses_only_variables_gitreload_reads() {
    let mut seen = 0;
    for value in yaml_documents(&root().join("deploy/kubernetes/gitreload-sidecar.yaml")) {
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                Value::Mapping(m) => {
                    if let Some(name) = m.get("name").and_then(|n| n.as_str()) {
                        if name.starts_with("GITRELOAD_")
                            && (m.contains_key("value") || m.contains_key("valueFrom"))
                        {
                            assert!(
                                known_variable(name),
                                "{name} is not a variable gitreload reads"
                            );
                            seen += 1;
                        }
                    }
                    stack.extend(m.into_iter().map(|(_, v)| v));
                }
                Value::Sequence(s) => stack.extend(s),
                _ => {}
            }
        }
    }
    assert!(seen >= 4);
}

#[test]
fn example_configs_and_rules_pass_promtool_and_amtool() {
    let deploy = root().join("deploy");
    run_ok(
        "promtool",
        &["check", "config", "prometheus.yml"],
        &deploy.join("example-config/prometheus"),
    );
    run_ok(
        "amtool",
        &["check-config", "alertmanager.yml"],
        &deploy.join("example-config/alertmanager"),
    );
    run_ok(
        "promtool",
        &["check", "rules", "gitreload.rules.yml"],
        &deploy.join("rules"),
    );
    run_ok(
        "promtool",
        &["test", "rules", "gitreload.rules.test.yml"],
        &deploy.join("rules"),
    );
}

#[test]
fn every_alerting_rule_has_a_runbook_and_a_unit_test() {
    let rules = yaml(&root().join("deploy/rules/gitreload.rules.yml"));
    let tests =
        std::fs::read_to_string(root().join("deploy/rules/gitreload.rules.test.yml")).unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            for annotation in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|t| t.len() > 20),
                    "{alert}: no {annotation}"
                );
            }
            assert!(
                tests.contains(&format!("alertname: {alert}")),
                "{alert} has no promtool unit test"
            );
        }
    }
    assert!(alerts >= 5);
}

#[test]
fn dockerfile_has_pinned_bases_a_non_root_user_a_healthcheck_and_the_checkers() {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let args: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let mut stages = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("FROM ")) {
        let mut words = line.split_whitespace().skip(1);
        let mut image = words.next().unwrap().to_string();
        if let Some(alias) = line
            .split_whitespace()
            .skip_while(|w| !w.eq_ignore_ascii_case("AS"))
            .nth(1)
        {
            stages.insert(alias.to_string());
        }
        if stages.contains(&image) {
            continue;
        }
        // Latest first: a later ARG's default may name an earlier one.
        for (k, v) in args.iter().rev() {
            image = image.replace(&format!("${{{k}}}"), v);
        }
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('$'),
            "unpinned base image: {line}"
        );
    }
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0, "runs as root");
    assert!(text.lines().any(|l| l.starts_with("HEALTHCHECK")
        || l.contains("CMD [\"/usr/local/bin/gitreload\", \"healthcheck\"]")));
    assert!(
        text.contains("\"healthcheck\"]"),
        "HEALTHCHECK does not use gitreload healthcheck"
    );
    assert!(
        stages.contains("prometheus") && stages.contains("alertmanager"),
        "{stages:?}"
    );
    assert!(text.contains("/bin/promtool /usr/local/bin/promtool"));
    assert!(text.contains("/bin/amtool /usr/local/bin/amtool"));
    // The same binary as the tests: default features, the locked graph.
    let build = text
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    for flag in ["--features", "--no-default-features", "--all-features"] {
        assert!(
            !build.contains(flag),
            "image builds other features than the tests: {build}"
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "*" || l.contains("target")),
        ".dockerignore keeps target/ out"
    );
}

#[test]
fn workflow_actions_are_pinned_by_version() {
    let mut files = Vec::new();
    yaml_files(&root().join(".github/workflows"), &mut files);
    assert!(files.len() >= 3);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines().filter_map(|l| {
            l.trim()
                .strip_prefix("- uses: ")
                .or(l.trim().strip_prefix("uses: "))
        }) {
            let version = line.split_once('@').map(|(_, v)| v).unwrap_or("");
            assert!(
                version.starts_with('v')
                    && version.chars().nth(1).is_some_and(|c| c.is_ascii_digit()),
                "{}: action not pinned by version: {line}",
                f.display()
            );
        }
    }
    let ci = std::fs::read_to_string(root().join(".github/workflows/ci.yml")).unwrap();
    assert!(
        ci.contains("bash .ci/run"),
        "CI workflow does not run the same command as .ci/run"
    );
}
