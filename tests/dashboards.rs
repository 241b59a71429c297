//! The Grafana dashboards of deploy/grafana/dashboards run as Grafana runs them: every
//! panel's, variable's and annotation's SQL, with Grafana's macros and variables expanded,
//! against a plain PostgreSQL and a TimescaleDB the demo's pipeline filled, checking the
//! rows and the columns each panel format needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use regex::Regex;
use seismo::Config;
use seismo::demo::{self, DemoOptions};
use seismo::pipeline;
use seismo_store::READER_ROLE;
use seismo_store::testing::{database_on, pg_url, tsdb_url};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Column, PgPool, Row, TypeInfo};

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/dashboards");
const DATASOURCES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/provisioning/datasources/seismo.yml"
);
/// Grafana's `$__interval` for the test's range (its own depends on the panel's width).
const INTERVAL_S: i64 = 300;

/// A database the demo filled, and the time range its data spans.
struct Filled {
    what: &'static str,
    pool: PgPool,
    /// Connected as Grafana's data source is: a member of the read-only role migrate grants.
    reader: PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

async fn fill(what: &'static str, server: String, timescaledb: &str) -> Filled {
    let url = database_on(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = url.clone();
    cfg.storage.timescaledb = timescaledb.into();
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    let store = pipeline::open_store(&cfg).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    if timescaledb == "require" {
        // The demo's data is dated January 2026: the retention and compression policies
        // would start dropping it while the test reads.
        sqlx::query(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs \
             WHERE hypertable_name IS NOT NULL",
        )
        .execute(&pool)
        .await
        .unwrap();
    }
    let opts = DemoOptions {
        days: 2,
        seed: 3,
        progress: false,
        no_graph: false,
    };
    let (summary, _) = demo::run(&cfg, Arc::clone(&store), &opts).await.unwrap();
    assert!(summary.incidents > 0, "{what}: the demo opened no incident");
    let (from, to): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT (SELECT min(time) FROM metric_points), \
         greatest((SELECT max(time) FROM metric_points), (SELECT max(time) FROM forecasts))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // Grafana's login, made as compose makes it, and connected as the data source does.
    sqlx::query(&grafana_user_statement())
        .execute(&pool)
        .await
        .unwrap();
    let (user, password) = datasource_login();
    let reader = PgPool::connect_with(
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .username(&user)
            .password(&password),
    )
    .await
    .unwrap();
    // What the role must not read: tokens, the audit trail, prompts and stage state.
    for secret in ["api_tokens", "audit_log", "llm_calls", "stage_positions"] {
        let e = sqlx::query(&format!("SELECT count(*) FROM {secret}"))
            .fetch_one(&reader)
            .await
            .expect_err(secret);
        assert!(
            e.to_string().contains("permission denied"),
            "{what}: {secret}: {e}"
        );
    }
    Filled {
        what,
        pool,
        reader,
        from,
        to,
    }
}

/// The statement compose's `grafana-user` service runs once migrate is done, as psql gets
/// it (compose turns each `$$` into `$`).
fn grafana_user_statement() -> String {
    let yaml = read_yaml("deploy/docker-compose.yml");
    let entrypoint = yaml["services"]["grafana-user"]["entrypoint"]
        .as_sequence()
        .expect("compose has a grafana-user service with an entrypoint");
    let sql = entrypoint
        .last()
        .and_then(|v| v.as_str())
        .expect("its statement");
    assert!(sql.contains(READER_ROLE), "{sql}");
    sql.replace("$$", "$")
}

/// The user and password Grafana's provisioned data source logs in with.
fn datasource_login() -> (String, String) {
    let yaml = read_yaml("deploy/grafana/provisioning/datasources/seismo.yml");
    let ds = &yaml["datasources"][0];
    let field = |v: &serde_norway::Value| v.as_str().expect("a string").to_string();
    (field(&ds["user"]), field(&ds["secureJsonData"]["password"]))
}

fn read_yaml(path: &str) -> serde_norway::Value {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A variable's value as Grafana interpolates it into SQL.
#[derive(Debug, Clone)]
enum VarValue {
    /// A single-valued variable: inserted as is.
    Raw(String),
    /// A multi-valued one: each value quoted, joined by commas.
    Quoted(Vec<String>),
    /// "All" with a custom all-value: inserted as is.
    All(String),
}

impl VarValue {
    fn sql(&self) -> String {
        match self {
            VarValue::Raw(v) | VarValue::All(v) => v.clone(),
            VarValue::Quoted(vs) => vs
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Expands Grafana's PostgreSQL macros and the dashboard's variables, as Grafana 11 does
/// for a PostgreSQL data source with the TimescaleDB option off (so one dashboard serves
/// both layouts).
fn expand(
    sql: &str,
    vars: &BTreeMap<String, VarValue>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> String {
    let mut s = sql
        .replace("$__interval_ms", &(INTERVAL_S * 1000).to_string())
        .replace("$__interval", &format!("{INTERVAL_S}s"));
    let time_filter = Regex::new(r"\$__timeFilter\(([^)]+)\)").unwrap();
    s = time_filter
        .replace_all(&s, |c: &regex::Captures<'_>| {
            format!(
                "{} BETWEEN '{}' AND '{}'",
                c[1].trim(),
                rfc3339(from),
                rfc3339(to)
            )
        })
        .into_owned();
    let group = Regex::new(r"\$__timeGroup(Alias)?\(([^,]+),\s*'?(\d+)([smhd])'?\s*\)").unwrap();
    s = group
        .replace_all(&s, |c: &regex::Captures<'_>| {
            let n: i64 = c[3].parse().unwrap();
            let secs = n * match &c[4] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => 86_400,
            };
            let alias = if c.get(1).is_some() {
                " AS \"time\""
            } else {
                ""
            };
            format!(
                "floor(extract(epoch from {})/{secs})*{secs}{alias}",
                c[2].trim()
            )
        })
        .into_owned();
    s = s
        .replace("$__timeFrom()", &format!("'{}'", rfc3339(from)))
        .replace("$__timeTo()", &format!("'{}'", rfc3339(to)));
    // Longest names first, so `$series` is not cut short by a `$ser` variable.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        // `${name:sqlstring}`: every value quoted, quotes inside doubled (Grafana's format).
        let quoted = match &vars[name] {
            VarValue::Raw(v) | VarValue::All(v) => VarValue::Quoted(vec![v.clone()]).sql(),
            q @ VarValue::Quoted(_) => q.sql(),
        };
        s = s.replace(&format!("${{{name}:sqlstring}}"), &quoted);
        let v = vars[name].sql();
        s = s
            .replace(&format!("${{{name}}}"), &v)
            .replace(&format!("${name}"), &v);
    }
    assert!(
        !Regex::new(r"\$\{?[A-Za-z_]").unwrap().is_match(&s),
        "a macro or variable was left unexpanded: {s}"
    );
    s
}

async fn run(db: &Filled, sql: &str, what: &str) -> Vec<PgRow> {
    sqlx::query(sql)
        .fetch_all(&db.reader)
        .await
        .unwrap_or_else(|e| panic!("{} on {}: {e}\n{sql}", what, db.what))
}

fn is_numeric(t: &str) -> bool {
    matches!(
        t,
        "INT2" | "INT4" | "INT8" | "FLOAT4" | "FLOAT8" | "NUMERIC"
    )
}

fn columns(rows: &[PgRow]) -> Vec<(String, String)> {
    rows.first()
        .map(|r| {
            r.columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks what a panel format needs: a time series has a `time` column (a timestamp, or
/// epoch seconds from `$__timeGroup`) in ascending order, numeric values and at most a
/// text `metric` column; a table's `time` column, when it has one, is a timestamp.
async fn check_columns(db: &Filled, rows: &[PgRow], format: &str, sql: &str, what: &str) {
    let cols = columns(rows);
    let time = cols.iter().find(|c| c.0 == "time");
    match format {
        "time_series" => {
            let (_, ty) = time.unwrap_or_else(|| panic!("{what}: no time column: {cols:?}"));
            assert!(
                ty == "TIMESTAMPTZ" || is_numeric(ty),
                "{what}: time column of type {ty}"
            );
            for (name, ty) in &cols {
                match name.as_str() {
                    "time" => {}
                    "metric" => assert_eq!(ty, "TEXT", "{what}: metric column"),
                    _ => assert!(is_numeric(ty), "{what}: value column {name} of type {ty}"),
                }
            }
            let epoch = if ty == "TIMESTAMPTZ" {
                "extract(epoch from \"time\")::float8"
            } else {
                "\"time\"::float8"
            };
            let times: Vec<f64> = sqlx::query_scalar(&format!("SELECT {epoch} FROM ({sql}) q"))
                .fetch_all(&db.reader)
                .await
                .unwrap();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "{what}: rows are not in time order"
            );
        }
        "table" => {
            if let Some((_, ty)) = time {
                assert_eq!(ty, "TIMESTAMPTZ", "{what}: time column");
            }
        }
        other => panic!("{what}: unknown format {other}"),
    }
}

/// Column names a panel's links and overrides refer to.
fn referenced_fields(panel: &Value) -> BTreeSet<String> {
    let text = panel["fieldConfig"].to_string();
    let re = Regex::new(r"__data\.fields\.([A-Za-z_]+)").unwrap();
    let mut out: BTreeSet<String> = re.captures_iter(&text).map(|c| c[1].to_string()).collect();
    if let Some(overrides) = panel["fieldConfig"]["overrides"].as_array() {
        for o in overrides {
            if o["matcher"]["id"] == "byName" {
                out.insert(o["matcher"]["options"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// Resolves the dashboard's variables in order, as Grafana does on load: each variable's
/// query runs with the ones before it set; multi-valued variables take "All", single ones
/// their first option. Returns the values and, per multi-valued variable, its first option.
async fn resolve_variables(
    db: &Filled,
    dashboard: &Value,
    title: &str,
) -> (BTreeMap<String, VarValue>, BTreeMap<String, String>) {
    let mut vars = BTreeMap::new();
    let mut firsts = BTreeMap::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_string();
        let what = format!("{title}: variable {name}");
        let sql = expand(v["query"].as_str().unwrap(), &vars, db.from, db.to);
        let rows = run(db, &sql, &what).await;
        assert!(!rows.is_empty(), "{what} has no options on {}", db.what);
        let cols = columns(&rows);
        let value_col = if cols.iter().any(|c| c.0 == "__value") {
            assert!(
                cols.iter().any(|c| c.0 == "__text"),
                "{what}: __value without __text"
            );
            "__value".to_string()
        } else {
            assert_eq!(cols.len(), 1, "{what}: one column, or __text and __value");
            cols[0].0.clone()
        };
        let first: String = rows[0].get(value_col.as_str());
        if v["includeAll"].as_bool() == Some(true) {
            let all = v["allValue"]
                .as_str()
                .expect("an all-value every filter checks");
            vars.insert(name.clone(), VarValue::All(all.to_string()));
            firsts.insert(name, first);
        } else {
            vars.insert(name, VarValue::Raw(first));
        }
    }
    (vars, firsts)
}

/// Every SQL query of a dashboard: (what, format, SQL, panel).
fn queries(dashboard: &Value) -> Vec<(String, String, String, Value)> {
    let title = dashboard["title"].as_str().unwrap();
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                format!("{title}: panel {:?} query {}", p["title"], t["refId"]),
                t["format"].as_str().unwrap().to_string(),
                t["rawSql"].as_str().unwrap().to_string(),
                p.clone(),
            ));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(sql) = a["target"]["rawSql"].as_str() {
            out.push((
                format!("{title}: annotation {:?}", a["name"]),
                "annotation".into(),
                sql.to_string(),
                Value::Null,
            ));
        }
    }
    out
}

async fn check_dashboard(db: &Filled, dashboard: &Value) {
    let title = dashboard["title"].as_str().unwrap();
    let (vars, firsts) = resolve_variables(db, dashboard, title).await;
    for (what, format, sql, panel) in queries(dashboard) {
        let expanded = expand(&sql, &vars, db.from, db.to);
        let rows = run(db, &expanded, &what).await;
        assert!(
            !rows.is_empty(),
            "{what} returned no rows on {}:\n{expanded}",
            db.what
        );
        if format == "annotation" {
            let cols = columns(&rows);
            let ty = |n: &str| cols.iter().find(|c| c.0 == n).map(|c| c.1.as_str());
            assert_eq!(ty("time"), Some("TIMESTAMPTZ"), "{what}");
            assert_eq!(ty("timeend"), Some("TIMESTAMPTZ"), "{what}");
            assert_eq!(ty("text"), Some("TEXT"), "{what}");
            assert_eq!(ty("tags"), Some("TEXT"), "{what}");
            continue;
        }
        check_columns(db, &rows, &format, &expanded, &what).await;
        let names: BTreeSet<String> = columns(&rows).into_iter().map(|c| c.0).collect();
        for field in referenced_fields(&panel) {
            // A panel of several queries refers to the fields of all of them.
            if panel["targets"].as_array().unwrap().len() == 1 {
                assert!(
                    names.contains(&field),
                    "{what}: no column {field} for its links or overrides"
                );
            }
        }
        // A hostile value in a single-valued variable (typed in, or put in the URL) stays a
        // string: the query still runs, and finds nothing of that "tenant".
        let mut hostile = vars.clone();
        hostile.insert("tenant".into(), VarValue::Raw("x' OR 'a'='a".into()));
        let sql_h = expand(&sql, &hostile, db.from, db.to);
        if sql.contains("tenant") {
            assert!(
                sql_h.contains("'x'' OR ''a''=''a'"),
                "{what}: the tenant is not quoted:\n{sql_h}"
            );
        }
        run(db, &sql_h, &format!("{what} with a hostile tenant")).await;
        // A hostile value in a single-valued variable (typed in, or put in the URL) stays a
        // string: the query still runs, and finds nothing of that "tenant".
        let mut hostile = vars.clone();
        hostile.insert("tenant".into(), VarValue::Raw("x' OR 'a'='a".into()));
        let sql_h = expand(&sql, &hostile, db.from, db.to);
        if sql.contains("tenant") {
            assert!(
                sql_h.contains("'x'' OR ''a''=''a'"),
                "{what}: the tenant is not quoted:\n{sql_h}"
            );
        }
        run(db, &sql_h, &format!("{what} with a hostile tenant")).await;
        // Each filter also runs with one concrete value chosen (it may match nothing).
        for (name, first) in &firsts {
            let mut one = vars.clone();
            one.insert(name.clone(), VarValue::Quoted(vec![first.clone()]));
            let sql = expand(&sql, &one, db.from, db.to);
            run(db, &sql, &format!("{what} with {name}={first}")).await;
        }
    }
}

fn dashboards() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(DASHBOARDS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn dashboards_are_well_formed_and_linked() {
    let all = dashboards();
    let titles: Vec<&str> = all.iter().map(|d| d["title"].as_str().unwrap()).collect();
    assert_eq!(
        titles,
        [
            "Seismo / Fleet overview",
            "Seismo / Incident",
            "Seismo / Series drill-down"
        ]
    );
    let ds: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(DATASOURCES).unwrap()).unwrap();
    let ds = &ds["datasources"][0];
    let uid = ds["uid"].as_str().unwrap();
    // $__timeGroup must not become time_bucket(): the dashboards serve plain PostgreSQL too.
    assert_eq!(ds["jsonData"]["timescaledb"].as_bool(), Some(false));
    let uids: BTreeSet<&str> = all.iter().map(|d| d["uid"].as_str().unwrap()).collect();
    let link = Regex::new(r"/d/([a-z-]+)/").unwrap();
    for d in &all {
        let title = d["title"].as_str().unwrap();
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(
                ids.insert(p["id"].as_i64().unwrap()),
                "{title}: duplicate panel id"
            );
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{title}: {:?} undescribed",
                p["title"]
            );
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"].as_str(), Some(uid), "{title}");
            }
            // Links between dashboards point at dashboards that exist.
            let text = p.to_string();
            for c in link.captures_iter(&text) {
                assert!(
                    uids.contains(&c[1]),
                    "{title}: link to unknown dashboard {}",
                    &c[1]
                );
            }
        }
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vars[0], "tenant", "{title}: every dashboard is per tenant");
    }
    // The fleet and series dashboards filter by service and host.
    for d in all.iter().filter(|d| d["uid"] != "seismo-incident") {
        let vars = d["templating"]["list"].to_string();
        assert!(vars.contains("\"service\"") && vars.contains("\"host\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs_on_postgres_and_timescaledb_filled_by_the_demo() {
    let (plain, timescale) = tokio::join!(
        fill("PostgreSQL", pg_url(), "auto"),
        fill("TimescaleDB", tsdb_url(), "require")
    );
    let layout: i64 =
        sqlx::query_scalar("SELECT count(*) FROM timescaledb_information.hypertables")
            .fetch_one(&timescale.pool)
            .await
            .unwrap();
    assert!(layout >= 4, "the TimescaleDB database has hypertables");
    for d in dashboards() {
        for db in [&plain, &timescale] {
            check_dashboard(db, &d).await;
        }
    }
}
