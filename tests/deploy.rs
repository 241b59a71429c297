//! Static checks of deploy/ (no Docker engine runs here): the compose file, Dockerfile,
//! Kubernetes manifests and Grafana provisioning parse, and every command, port and
//! variable they name exists in the binary and its configuration.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{CommandFactory, Parser};
use seismo::Config;
use seismo::cli::Cli;
use serde::Deserialize;
use serde_norway::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = read(path);
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let mut v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
        v.apply_merge().unwrap_or_else(|e| panic!("{path}: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

/// A command line the image runs must parse as `seismo ...`.
fn check_args(origin: &str, args: &[String]) {
    let mut argv = vec!["seismo".to_string()];
    argv.extend(args.iter().cloned());
    if let Err(e) = Cli::try_parse_from(&argv) {
        panic!(
            "{origin}: `{}` is not a valid seismo command: {e}",
            argv.join(" ")
        );
    }
}

/// Environment variables must be ones Seismo reads: config overrides that the config
/// accepts, the config path, or the log filter.
fn check_env(origin: &str, env: &BTreeMap<String, String>) -> Config {
    let config_env = Cli::command()
        .get_arguments()
        .find_map(|a| a.get_env().map(|e| e.to_string_lossy().to_string()))
        .expect("the CLI reads its config path from the environment");
    for k in env.keys().filter(|k| k.starts_with("SEISMO_")) {
        assert!(
            k.contains("__") || *k == config_env || k == seismo::LOG_ENV,
            "{origin}: {k} is not a variable seismo reads"
        );
    }
    let overrides: Vec<(String, String)> =
        env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Config::from_toml_and_env("", overrides)
        .unwrap_or_else(|e| panic!("{origin}: environment refused by the config: {e:#}"))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().map(scalar).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list, got {other:?}"),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_services_run_real_commands_with_real_settings() {
    let docs = yaml_docs("deploy/docker-compose.yml");
    let services = docs[0]["services"].as_mapping().expect("services");
    let mut seismo_services = 0;
    let mut partitions = None;
    for (name, svc) in services {
        let name = scalar(name);
        let image = svc["image"].as_str().unwrap_or_default();
        if !image.starts_with("seismo") {
            continue;
        }
        seismo_services += 1;
        assert_eq!(
            svc["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile")
        );
        let env: BTreeMap<String, String> = svc["environment"]
            .as_mapping()
            .expect("environment")
            .iter()
            .map(|(k, v)| (scalar(k), scalar(v)))
            .collect();
        let cfg = check_env(&format!("compose {name}"), &env);
        partitions = Some(cfg.kafka.partitions);
        if !svc["entrypoint"].is_null() {
            // `sh -c "seismo a && seismo b"`: every seismo invocation must parse.
            let ep = strings(&svc["entrypoint"]);
            let script = ep.last().unwrap();
            for part in script.split("&&") {
                let words: Vec<String> = part.split_whitespace().map(str::to_string).collect();
                assert_eq!(words[0], "seismo", "compose {name}: {part}");
                check_args(&format!("compose {name}"), &words[1..]);
            }
        } else {
            check_args(&format!("compose {name}"), &strings(&svc["command"]));
        }
        for p in strings(&svc["ports"]) {
            let container: u16 = p.rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(
                container,
                port_of(&cfg.http.listen),
                "compose {name}: publishes {p} but listens on {}",
                cfg.http.listen
            );
        }
        if let Some(r) = svc["deploy"]["replicas"].as_i64() {
            assert!(
                r as i32 <= cfg.kafka.partitions,
                "compose {name}: more replicas than partitions"
            );
        }
        assert!(cfg.kafka.enabled(), "compose {name}: no brokers");
        assert!(
            cfg.storage.url.starts_with("postgres://"),
            "compose {name}: not on PostgreSQL"
        );
    }
    assert_eq!(seismo_services, 8, "setup plus seven stages");
    assert!(partitions.is_some());
    for dep in ["kafka", "timescaledb", "grafana"] {
        assert!(services.contains_key(dep), "compose has no {dep}");
    }
    let kraft = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str();
    assert_eq!(kraft, Some("broker,controller"), "Kafka runs in KRaft mode");
}

#[test]
fn dockerfile_entrypoint_port_and_environment_exist() {
    let text = read("deploy/Dockerfile");
    let json_list = |line: &str| -> Vec<String> {
        serde_json::from_str(line.split_once(' ').unwrap().1.trim()).unwrap()
    };
    let entry = text
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert_eq!(json_list(entry), ["seismo"]);
    let cmd = text.lines().find(|l| l.starts_with("CMD")).expect("CMD");
    check_args("Dockerfile CMD", &json_list(cmd));
    // ENV lines (with continuations) must be variables seismo reads.
    let mut env = BTreeMap::new();
    let joined = text.replace("\\\n", " ");
    for line in joined.lines().filter(|l| l.starts_with("ENV ")) {
        for kv in line[4..].split_whitespace() {
            let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_string(), v.to_string());
        }
    }
    let cfg = check_env("Dockerfile", &env);
    let expose: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(expose, port_of(&cfg.http.listen));
    for copy in text.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        if copy.starts_with("--from") || copy.starts_with(". ") {
            continue;
        }
        let src = copy.split_whitespace().next().unwrap();
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
            "Dockerfile copies missing {src}"
        );
    }
}

#[test]
fn kubernetes_manifests_are_consistent_with_the_binary() {
    let mut docs = Vec::new();
    for f in ["namespace", "config", "stages", "services", "setup-job"] {
        for d in yaml_docs(&format!("deploy/k8s/{f}.yaml")) {
            docs.push((f, d));
        }
    }
    let by_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|(_, d)| d["kind"].as_str() == Some(kind))
            .map(|(_, d)| d)
            .collect()
    };
    for (f, d) in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{f}: not a manifest"
        );
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"].as_str(), Some("seismo"), "{f}");
        }
    }
    let cm = by_kind("ConfigMap")[0];
    let toml_text = cm["data"]["seismo.toml"].as_str().unwrap();
    let secret = by_kind("Secret")[0];
    let secret_env: BTreeMap<String, String> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (scalar(k), scalar(v)))
        .collect();
    let cfg = Config::from_toml_and_env(toml_text, secret_env.clone())
        .unwrap_or_else(|e| panic!("ConfigMap + Secret refused: {e:#}"));
    check_env("Secret", &secret_env);
    let port = port_of(&cfg.http.listen);

    let mut stages = Vec::new();
    let mut pod_specs: Vec<(String, &Value)> = Vec::new();
    for dep in by_kind("Deployment") {
        pod_specs.push((
            dep["metadata"]["name"].as_str().unwrap().to_string(),
            &dep["spec"]["template"]["spec"],
        ));
        let args = strings(&dep["spec"]["template"]["spec"]["containers"][0]["args"]);
        stages.push(args[2].clone());
        if args[2] == "detect" {
            let r = dep["spec"]["replicas"].as_i64().unwrap();
            assert!(r as i32 <= cfg.kafka.partitions);
        }
    }
    for job in by_kind("Job") {
        pod_specs.push(("job".into(), &job["spec"]["template"]["spec"]));
    }
    stages.sort();
    assert_eq!(
        stages,
        [
            "api",
            "correlate",
            "detect",
            "explain",
            "forecast",
            "ingest",
            "notify"
        ]
    );
    for (name, spec) in &pod_specs {
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_sequence().into_iter().flatten() {
                check_args(name, &strings(&c["args"]));
                let env: BTreeMap<String, String> = c["env"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|e| (scalar(&e["name"]), scalar(&e["value"])))
                    .collect();
                check_env(name, &env);
                for p in c["ports"].as_sequence().into_iter().flatten() {
                    assert_eq!(p["containerPort"].as_i64(), Some(i64::from(port)), "{name}");
                }
                if let Some(path) = c["readinessProbe"]["httpGet"]["path"].as_str() {
                    assert_eq!(path, "/healthz", "{name}: probes a route the stages serve");
                }
                for from in c["envFrom"].as_sequence().into_iter().flatten() {
                    assert_eq!(from["secretRef"]["name"], secret["metadata"]["name"]);
                }
            }
        }
    }
    for hpa in by_kind("HorizontalPodAutoscaler") {
        let max = hpa["spec"]["maxReplicas"].as_i64().unwrap();
        assert!(
            max as i32 <= cfg.kafka.partitions,
            "detect may scale past the partitions"
        );
    }
    for svc in by_kind("Service") {
        assert_eq!(svc["spec"]["ports"][0]["targetPort"].as_str(), Some("http"));
        let stage = svc["spec"]["selector"]["stage"].as_str().unwrap();
        assert!(stages.iter().any(|s| s == stage));
    }
}

#[test]
fn grafana_reads_the_compose_database() {
    let ds = &yaml_docs("deploy/grafana/provisioning/datasources/seismo.yml")[0]["datasources"][0];
    let compose = &yaml_docs("deploy/docker-compose.yml")[0]["services"];
    let db = &compose["timescaledb"]["environment"];
    assert_eq!(ds["url"].as_str(), Some("timescaledb:5432"));
    assert_eq!(ds["jsonData"]["database"], db["POSTGRES_DB"]);
    // Grafana logs in as the read-only user compose's grafana-user service creates (as
    // the database's owner) before Grafana starts; tests/dashboards.rs runs its statement.
    let user = ds["user"].as_str().unwrap();
    let password = ds["secureJsonData"]["password"].as_str().unwrap();
    assert_ne!(
        Some(user),
        db["POSTGRES_USER"].as_str(),
        "Grafana must not log in as the owner"
    );
    let maker = &compose["grafana-user"];
    let statement = strings(&maker["entrypoint"]).pop().unwrap();
    assert!(
        statement.contains(&format!(
            "CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {}",
            seismo_store::READER_ROLE
        )),
        "{statement}"
    );
    assert!(
        strings(&maker["entrypoint"])
            .iter()
            .any(|a| a.contains(&format!(
                "{}@timescaledb:5432/{}",
                db["POSTGRES_USER"].as_str().unwrap(),
                db["POSTGRES_DB"].as_str().unwrap()
            )))
    );
    assert_eq!(maker["environment"]["PGPASSWORD"], db["POSTGRES_PASSWORD"]);
    assert_eq!(
        maker["depends_on"]["setup"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    assert_eq!(
        compose["grafana"]["depends_on"]["grafana-user"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
}
