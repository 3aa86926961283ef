//! The deployment files stay true to the settings: every `CXREL__…` variable they set names a real
//! setting and its literal value loads; the ConfigMap is config/default.toml; the Deployment gives
//! in-flight jobs time to drain and runs locked down.

use std::collections::HashMap;
use std::path::Path;

use cxrel::settings::{DEFAULT_TOML, Settings, Sources};
use serde_yaml_ng::Value;

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir("deploy/k8s")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.push("deploy/docker-compose.yml".into());
    paths.sort();
    for path in paths {
        for doc in documents(&path) {
            out.push((path.display().to_string(), doc));
        }
    }
    out
}

/// (name, literal value if any) of every environment variable set anywhere in `value`.
fn env_vars(value: &Value, out: &mut Vec<(String, Option<String>)>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    (Some("env"), Value::Sequence(items)) => {
                        for item in items {
                            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                            let literal =
                                item.get("value").and_then(Value::as_str).map(str::to_owned);
                            out.push((name.to_owned(), literal));
                        }
                    }
                    (Some("environment"), Value::Mapping(vars)) => {
                        for (name, literal) in vars {
                            let literal = match literal {
                                Value::String(s) => Some(s.clone()),
                                Value::Number(n) => Some(n.to_string()),
                                _ => None,
                            };
                            out.push((name.as_str().unwrap_or_default().to_owned(), literal));
                        }
                    }
                    _ => env_vars(child, out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| env_vars(i, out)),
        _ => {}
    }
}

/// `CXREL__X=value` assignments in a non-YAML file (Dockerfile `ENV`, systemd `Environment=`).
fn text_vars(path: &str, out: &mut Vec<(String, Option<String>)>) {
    let text = std::fs::read_to_string(path).unwrap();
    for word in text.split(|c: char| c.is_whitespace() || c == '\\') {
        let word = word.strip_prefix("Environment=").unwrap_or(word);
        if let Some((name, value)) = word.split_once('=')
            && name.starts_with("CXREL__")
        {
            out.push((name.to_owned(), Some(value.trim_matches('"').to_owned())));
        }
    }
}

/// `CXREL__CXONE__AUTH__MODE` → `cxone.auth.mode`.
fn setting_path(var: &str) -> Option<String> {
    var.strip_prefix("CXREL__")
        .map(|rest| rest.to_lowercase().replace("__", "."))
}

#[test]
fn every_cxrel_variable_in_the_manifests_names_a_setting_and_its_literal_value_loads() {
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .unwrap();
    let mut vars = Vec::new();
    for (_, doc) in manifests() {
        env_vars(&doc, &mut vars);
    }
    let before = vars.len();
    text_vars("deploy/Dockerfile", &mut vars);
    text_vars("deploy/systemd/cxrel.service", &mut vars);
    assert!(
        vars.len() >= before + 3,
        "Dockerfile ENV and systemd Environment= read"
    );
    let cxrel_vars: Vec<_> = vars
        .iter()
        .filter(|(n, _)| n.starts_with("CXREL__"))
        .collect();
    assert!(cxrel_vars.len() >= 10, "found only {cxrel_vars:?}");
    let mut literals = HashMap::new();
    for (name, literal) in cxrel_vars {
        let path = setting_path(name).unwrap();
        assert!(
            defaults.get::<config::Value>(&path).is_ok(),
            "{name} sets `{path}`, which is not a setting in config/default.toml"
        );
        if let Some(value) = literal {
            literals.insert(name.clone(), value.clone());
        }
    }
    Settings::load_with_env(&Sources::default(), Some(literals))
        .expect("the manifests' literal values load as settings");
}

#[test]
fn the_configmap_carries_config_default_toml_verbatim() {
    let docs = documents(Path::new("deploy/k8s/configmap.yaml"));
    let toml = docs[0]["data"]["cxrel.toml"].as_str().unwrap();
    assert_eq!(
        toml.trim_end(),
        DEFAULT_TOML.trim_end(),
        "run deploy/k8s/gen-configmap.sh"
    );
}

#[test]
fn the_deployment_drains_before_being_killed_and_runs_locked_down() {
    let docs = documents(Path::new("deploy/k8s/deployment.yaml"));
    let pod = &docs[0]["spec"]["template"]["spec"];
    let settings = Settings::load_with_env(&Sources::default(), Some(HashMap::new())).unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > settings.worker.shutdown_timeout.as_secs());
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(
        container["resources"]["requests"]["memory"]
            .as_str()
            .is_some()
    );
}

#[test]
fn every_manifest_parses_and_names_its_kind() {
    for (path, doc) in manifests() {
        if path.ends_with("docker-compose.yml") {
            assert!(doc["services"]["worker"].is_mapping(), "{path}");
        } else {
            assert!(
                doc["kind"].as_str().is_some(),
                "{path}: a document without kind"
            );
        }
    }
}

#[test]
fn the_compose_file_publishes_ports_on_loopback_only() {
    // The emulator's control API has no auth and RabbitMQ runs with guest/guest: neither may be
    // reachable from other machines.
    let compose = &documents(Path::new("deploy/docker-compose.yml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    let mut published = 0;
    for (name, service) in services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap_or_default();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name:?} publishes {port:?} on every interface"
            );
            published += 1;
        }
    }
    assert!(published >= 3, "rabbitmq (2 ports) and the emulator");
}
