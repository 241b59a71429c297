//! The `seismo` command line's declaration (clap), in the library so tests can check it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Streaming anomaly detection and incident correlation for telemetry.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML); `SEISMO_SECTION__KEY` environment variables override it.
    #[arg(long, short, global = true, env = "SEISMO_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate a fleet with injected faults through the whole pipeline, embedded.
    Demo {
        /// Write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Keep the HTTP API up after the run (until Ctrl-C).
        #[arg(long)]
        serve: bool,
        /// Simulated days (faults fall on the last one).
        #[arg(long, default_value_t = 3)]
        days: u64,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Database of the demo; it is recreated on every run.
        #[arg(long, default_value = "sqlite://seismo-demo.db")]
        db: String,
        /// Leave the fleet's dependency graph out: correlation then groups by learned
        /// co-occurrence (`correlate.learn_cooccurrence`), as for a user with no graph.
        #[arg(long)]
        no_graph: bool,
    },
    /// Run the pipeline: every stage embedded in this process (default), or one stage of
    /// the distributed mode on Kafka and PostgreSQL (`--stage`).
    Run {
        /// Run only this stage, reading and writing Kafka (kafka.brokers) and the store
        /// (storage.url). Scale a stage by starting more processes of it.
        #[arg(long, value_enum)]
        stage: Option<Stage>,
    },
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Create or upgrade the database tables.
    Migrate,
    /// API tokens: create, revoke and list the bearer tokens HTTP clients authenticate with.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Score a CSV file: `timestamp,value` with the streaming detector, or several numeric
    /// columns (a `label` column is ignored) with an isolation forest fitted on the file.
    Detect {
        file: PathBuf,
        /// Where to write the scored CSV (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Seed of the isolation forest (multi-column files).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Forecast a CSV series (`timestamp,value`, RFC 3339 or epoch seconds/milliseconds,
    /// evenly spaced) with intervals: writes `timestamp,yhat,lower,upper` for the horizon.
    Forecast {
        file: PathBuf,
        /// How far ahead: a number of steps, or a duration such as 48h, 90m or 2d.
        #[arg(long)]
        horizon: String,
        /// Interval coverage, between 0.5 and 0.995.
        #[arg(long, default_value_t = 0.95)]
        level: f64,
        /// Where to write the forecast CSV (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Rank the likely root causes of a symptom from the stored points (storage.url): the
    /// services whose metrics changed most around AT, with latency explained along
    /// `[correlate.dependencies]`.
    Investigate {
        /// The service showing the symptom (a value of correlate.service_label).
        #[arg(long)]
        service: Option<String>,
        /// Or a label the symptom series carries, as name=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// When the symptom began (RFC 3339).
        #[arg(long)]
        at: chrono::DateTime<chrono::Utc>,
        /// The tenant whose data to read.
        #[arg(long, default_value = seismo_schemas::DEFAULT_TENANT)]
        tenant: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Quality harnesses on a data folder.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Reports on the result tables (storage.url).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Read-only SQL over one tenant's result tables (storage.url): anomalies, incidents,
    /// incident_anomalies, incident_events, alerts, series, forecasts, bands. Needs a build
    /// with `--features sql`; limits from the `[query]` section.
    Query {
        /// One SELECT, WITH or EXPLAIN statement.
        sql: String,
        #[arg(long, default_value = seismo_schemas::DEFAULT_TENANT)]
        tenant: String,
        /// table (for a terminal), json, or arrow (an Arrow IPC stream, to stdout).
        #[arg(long, default_value = "table")]
        format: QueryFormat,
        /// Most rows to print (query.max_rows caps it).
        #[arg(long)]
        max_rows: Option<usize>,
    },
}

/// How `seismo query` prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    Table,
    Json,
    Arrow,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// A week of anomalies and incidents per service, time to acknowledge and to resolve,
    /// the noisiest series and forecast capacity warnings: report.md, report.html and
    /// report.json with SVG charts.
    Weekly {
        /// End of the week: RFC 3339, or a date (the week ends when that day does).
        /// Default: now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = seismo_schemas::DEFAULT_TENANT)]
        tenant: String,
        /// Folder to write the report into.
        #[arg(long, short, default_value = "seismo-report")]
        out: PathBuf,
        /// Rows in the noisiest-series table.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Isolation-forest ROC AUC per dataset of an ODDS folder (CSV files with a `label` column).
    Odds {
        dir: PathBuf,
        /// Seeds to average over.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run the streaming detector over a NAB-layout folder (data/, labels/, config/) and
    /// score it as NAB does.
    Nab {
        dir: PathBuf,
        /// Write NAB result files under RESULTS/<name>/ (for NAB's own scorer).
        #[arg(long)]
        results: Option<PathBuf>,
        /// Detector name used in result file names (no '_').
        #[arg(long, default_value = "seismo")]
        name: String,
        /// Candidate values of a [detect] setting, KEY=V1,V2,... (e.g.
        /// stream.context_len=2,3; repeatable: every combination is a candidate). Each
        /// held-out category is scored with the candidate the other categories chose.
        #[arg(long)]
        choose: Vec<String>,
        /// Also write the scores as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Server-metric entities (the layout of ../shared/data/multivariate: GROUP/ENTITY/
    /// {train,test}.csv with a `label` column in test.csv, and interpretation.txt), each
    /// streamed train then test through the detect stage's detector as one host; prints
    /// point-adjusted F1, event recall, false-alarm minutes a day, detection delay and
    /// HitRate per entity, pooled, and left one entity out.
    Multivariate {
        dir: PathBuf,
        /// Candidate values of a [detect] setting, KEY=V1,V2,... (repeatable: every
        /// combination is a candidate). Each held-out entity is scored with the candidate
        /// the other entities of its group chose.
        #[arg(long)]
        choose: Vec<String>,
        /// Sampling step of a group, GROUP=SECONDS (repeatable; asd defaults to 300, any
        /// other group to 60).
        #[arg(long)]
        step: Vec<String>,
        /// The false-alarm budget candidates are chosen within, in minutes a day per host.
        #[arg(long, default_value_t = 5.0)]
        max_false_minutes: f64,
        /// Only these entities (repeatable; GROUP/ENTITY or ENTITY).
        #[arg(long)]
        only: Vec<String>,
        /// Also write the scores as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Weeks of one server's metrics (an entity of the ../shared/data/multivariate layout,
    /// train then test rows, as one host) through the whole embedded pipeline: drain time,
    /// resident memory day by day, incident sizes and quiet-time incidents a day. Compare a
    /// run with `--no-correlate` to see what correlation costs (scripts/bench-long-host.sh).
    Host {
        /// An entity folder, or a folder of them (then the first, or --entity).
        dir: PathBuf,
        /// The entity to stream, by folder name.
        #[arg(long)]
        entity: Option<String>,
        /// Run without the correlate stage.
        #[arg(long)]
        no_correlate: bool,
        /// Also write the measurements as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Root-cause ranking on microservice fault cases (the layout of ../shared/data/rca:
    /// per system graph.json and cases/*/{metrics.csv,truth.json}); prints AC@1, AC@3 and
    /// Avg@5 per system, fault type and day, for `investigate` and for the incidents of each
    /// case streamed through the embedded pipeline.
    Rca {
        dir: PathBuf,
        /// Only rank with `investigate` (skips streaming every case, which takes minutes).
        #[arg(long)]
        investigate_only: bool,
        /// Ignore the systems' graph.json: investigate ranks on each service's own evidence
        /// and correlation groups by learned co-occurrence
        /// (`correlate.learn_cooccurrence`), as for a user with no graph configured.
        #[arg(long)]
        no_graph: bool,
        /// Also write every case's rank as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The forecast models on M4 Hourly (a folder with Hourly-train.csv and
    /// Hourly-test.csv): sMAPE, MASE and OWA against Naive2 as the M4 organisers compute
    /// them, per model and for the chosen forecast, interval coverage and MSIS, OWA per
    /// fold of series, and the time per series.
    M4 {
        dir: PathBuf,
        /// Interval coverage to score.
        #[arg(long, default_value_t = 0.95)]
        level: f64,
        /// Only the first N series (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Candidate values of a [forecast.models] setting, KEY=V1,V2,... (e.g.
        /// origins=4,6; repeatable: every combination is a candidate). Each held-out fold
        /// of series is scored with the candidate the other folds chose.
        #[arg(long)]
        choose: Vec<String>,
        /// Also write the scores as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The explainer on simulated incidents of the demo fleet (a quarter with weak
    /// evidence): schema-valid answers, grounding violations per mention, whether the top
    /// hypothesis names the injected cause, abstention, latency and tokens. Explains with
    /// the model of [explain.model] (or --model-url/--model), or the template without one.
    Explain {
        /// Number of incidents.
        #[arg(long, default_value_t = 40)]
        cases: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also explain the incidents of this many demo runs (seeds 1..=N): the whole
        /// pipeline on the simulator's telemetry, about 11 s each plus the explanations.
        #[arg(long, default_value_t = 0)]
        demo_seeds: u64,
        /// OpenAI-compatible base URL, e.g. http://127.0.0.1:18080/v1 (overrides the config).
        #[arg(long)]
        model_url: Option<String>,
        /// Model name to send (overrides the config).
        #[arg(long)]
        model: Option<String>,
        /// Explain with the template even if a model is configured.
        #[arg(long)]
        template: bool,
        /// Also write every case's result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// The tenant the token reads and writes.
        #[arg(long)]
        tenant: String,
        /// What it may do: ingest, read, write (read and move incidents) or admin
        /// (everything, any tenant, tokens and the audit log).
        #[arg(long, value_parser = parse_role)]
        role: seismo_schemas::Role,
        /// A name saying who or what holds it.
        #[arg(long, default_value = "")]
        name: String,
        /// Ingest budget in points per second (bursts of two seconds' worth); default
        /// http.ingest_rate_per_token.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Revoke a token by its id (the 12 hex digits after `smo_`).
    Revoke { id: String },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's tokens.
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

fn parse_role(s: &str) -> Result<seismo_schemas::Role, String> {
    seismo_schemas::Role::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of ingest, read, write, admin"))
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every Seismo topic with kafka.partitions and kafka.replication; topics that
    /// already exist are left as they are.
    Create,
}

/// A stage of the distributed mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// seismo.metrics (JSON lines, remote_write) → metric_points + seismo.points; invalid
    /// records → seismo.dlq. Also serves HTTP ingest on http.listen.
    Ingest,
    /// seismo.points → anomalies + seismo.anomalies, with per-partition checkpoints.
    Detect,
    /// seismo.points → forecasts.
    Forecast,
    /// seismo.anomalies + seismo.alerts → incidents + seismo.incidents.
    Correlate,
    /// seismo.incidents → pages to the [notify] receivers, with a notification log.
    Notify,
    /// seismo.incidents → an explanation of each incident (a model or the template), stored
    /// beside it; never on the path of correlation or paging.
    Explain,
    /// The query API on http.listen.
    Api,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Detect => "detect",
            Stage::Forecast => "forecast",
            Stage::Correlate => "correlate",
            Stage::Notify => "notify",
            Stage::Explain => "explain",
            Stage::Api => "api",
        }
    }
}
