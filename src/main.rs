//! The `seismo` command line: dispatch of the subcommands declared in `seismo::cli`.
#![expect(
    clippy::disallowed_methods,
    reason = "the CLI reports wall time and `--at` defaults to now"
)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use seismo::Config;
use seismo::cli::{Cli, Command, EvalCommand, ReportCommand, TokenCommand, TopicsCommand};
use seismo::demo::{self, DemoOptions};
use seismo::pipeline::{self, Embedded};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(seismo::LOG_ENV)
                .unwrap_or_else(|_| "warn,seismo=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo {
                summary_json,
                serve,
                days,
                seed,
                db,
                no_graph,
            } => demo_cmd(cfg, summary_json, serve, days, seed, db, no_graph).await,
            Command::Run { stage: None } => run_cmd(cfg).await,
            Command::Run { stage: Some(stage) } => {
                seismo::distributed::run_stage(&cfg, stage).await
            }
            Command::Topics(TopicsCommand::Create) => {
                seismo::distributed::create_topics(&cfg).await
            }
            Command::Detect { file, output, seed } => {
                detect_cmd(&cfg, &file, output.as_deref(), seed)
            }
            Command::Eval(EvalCommand::Odds { dir, seeds, json }) => {
                let seeds: Vec<u64> = (0..seeds.max(1)).collect();
                let results =
                    seismo::eval::odds::run(&dir, &seeds, seismo_detect::ForestParams::default())?;
                print!("{}", seismo::eval::odds::render(&results));
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
                }
                Ok(())
            }
            Command::Eval(EvalCommand::Nab {
                dir,
                results,
                name,
                json,
                choose,
            }) => {
                anyhow::ensure!(
                    !name.contains('_'),
                    "--name must not contain '_' (NAB splits file names on it)"
                );
                let corpus = seismo::eval::nab::Corpus::open(&dir)?;
                let started = std::time::Instant::now();
                let candidates = seismo::eval::nab::candidates(&cfg.detect, &choose)?;
                let report = seismo::eval::nab::report(
                    &corpus,
                    &candidates,
                    results.as_deref().map(|r| (r, name.as_str())),
                )?;
                print!("{}", seismo::eval::nab::render(&report));
                println!("  ({:.1} s)", started.elapsed().as_secs_f64());
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                }
                Ok(())
            }
            Command::Eval(EvalCommand::Multivariate {
                dir,
                choose,
                step,
                max_false_minutes,
                only,
                json,
            }) => {
                let mut steps = std::collections::BTreeMap::new();
                for s in &step {
                    let (g, v) = s
                        .split_once('=')
                        .with_context(|| format!("--step {s:?}: expected GROUP=SECONDS"))?;
                    let secs: u64 = v.parse().ok().filter(|v| *v > 0).with_context(|| {
                        format!("--step {s:?}: SECONDS must be a positive whole number")
                    })?;
                    steps.insert(g.to_string(), secs);
                }
                let mut entities = seismo::eval::multivariate::open(&dir, &steps)?;
                if !only.is_empty() {
                    entities.retain(|e| {
                        only.iter()
                            .any(|o| *o == e.name || *o == format!("{}/{}", e.group, e.name))
                    });
                    anyhow::ensure!(!entities.is_empty(), "--only matched no entity");
                }
                let candidates = seismo::eval::nab::candidates(&cfg.detect, &choose)?;
                let report = seismo::eval::multivariate::report(
                    &entities,
                    &candidates,
                    max_false_minutes,
                    true,
                )?;
                print!("{}", seismo::eval::multivariate::render(&report));
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                }
                Ok(())
            }
            Command::Eval(EvalCommand::M4 {
                dir,
                level,
                limit,
                choose,
                json,
            }) => {
                anyhow::ensure!(
                    (0.5..=0.995).contains(&level),
                    "--level must be between 0.5 and 0.995"
                );
                let mut series = seismo::eval::m4::open(&dir)?;
                if limit > 0 {
                    series.truncate(limit);
                }
                let candidates =
                    seismo::eval::candidates_of(&cfg.forecast.models, &choose, "forecast.models")?;
                let bar = indicatif::ProgressBar::new((series.len() * candidates.len()) as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} forecasting series {pos}/{len} [{bar:30}] eta {eta}",
                    )?
                    .progress_chars("=> "),
                );
                let report = seismo::eval::m4::report(&series, &candidates, level, || bar.inc(1))?;
                bar.finish_and_clear();
                print!("{}", seismo::eval::m4::render(&report));
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                }
                Ok(())
            }
            Command::Forecast {
                file,
                horizon,
                level,
                output,
            } => {
                seismo::forecast_file::run(&cfg.forecast, &file, &horizon, level, output.as_deref())
            }
            Command::Report(ReportCommand::Weekly {
                to,
                tenant,
                out,
                top,
            }) => report_cmd(&cfg, to.as_deref(), tenant, &out, top).await,
            Command::Query {
                sql,
                tenant,
                format,
                max_rows,
            } => query_cmd(&cfg, &sql, &tenant, format, max_rows).await,
            Command::Eval(EvalCommand::Host {
                dir,
                entity,
                no_correlate,
                json,
            }) => {
                use seismo::eval::host;
                let e = host::pick(&dir, entity.as_deref())?;
                eprintln!(
                    "{}/{}: streaming {} rows of {} metrics{}",
                    e.group,
                    e.name,
                    e.train.len() / e.metrics.len().max(1) + e.labels.len(),
                    e.metrics.len(),
                    if no_correlate {
                        ", correlation off"
                    } else {
                        ""
                    }
                );
                let report = host::run(&cfg, &e, !no_correlate).await?;
                print!("{}", host::render(&report));
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                }
                Ok(())
            }
            Command::Eval(EvalCommand::Rca {
                dir,
                json,
                investigate_only,
                no_graph,
            }) => rca_cmd(&cfg, &dir, json.as_deref(), investigate_only, no_graph).await,
            Command::Eval(EvalCommand::Explain {
                cases,
                seed,
                demo_seeds,
                model_url,
                model,
                template,
                json,
            }) => {
                let mut ex = cfg.explain.clone();
                if let Some(u) = model_url {
                    ex.model.base_url = u;
                }
                if let Some(m) = model {
                    ex.model.model = m;
                }
                if template {
                    ex.model.base_url.clear();
                }
                ex.validate().map_err(anyhow::Error::msg)?;
                let report = seismo::eval::explain::run(ex, cases, seed, demo_seeds, true).await?;
                print!("{}", seismo::eval::explain::render(&report));
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                }
                Ok(())
            }
            Command::Investigate {
                service,
                labels,
                at,
                tenant,
                json,
            } => {
                let store = pipeline::open_store(&cfg).await?;
                let q = seismo_correlate::investigate::Question {
                    service,
                    labels: labels.into_iter().collect(),
                    at,
                };
                let a = seismo_correlate::investigate::investigate(
                    store.as_ref(),
                    &cfg.correlate,
                    &tenant,
                    &q,
                )
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                } else {
                    println!(
                        "{} series examined at {} s resolution; symptom {}",
                        a.series_examined,
                        a.bucket_secs,
                        a.symptom.as_deref().unwrap_or("(none named)")
                    );
                    for (i, c) in a.candidates.iter().enumerate() {
                        println!("{:>2}. {} (score {:.2})", i + 1, c.target, c.score);
                        for e in &c.evidence {
                            println!("      {e}");
                        }
                    }
                }
                Ok(())
            }
            Command::Migrate => {
                pipeline::open_store(&cfg).await?;
                println!(
                    "migrations applied to {}",
                    pipeline::redact(&cfg.storage.url)
                );
                Ok(())
            }
            Command::Token(cmd) => token_cmd(&cfg, cmd).await,
        }
    })
}

async fn rca_cmd(
    cfg: &Config,
    dir: &std::path::Path,
    json: Option<&std::path::Path>,
    investigate_only: bool,
    no_graph: bool,
) -> anyhow::Result<()> {
    use seismo::eval::rca;
    let started = std::time::Instant::now();
    let (mut investigated, mut streamed, mut holding, mut holding_then) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut split, mut coverage, mut spread) = (Vec::new(), Vec::new(), Vec::new());
    for path in rca::systems(dir)? {
        let mut sys = rca::load_system(&path)?;
        if no_graph {
            sys.calls.clear();
            sys.graph = seismo_correlate::rank::Graph::new(&sys.calls);
        }
        eprintln!("{}: {} cases", sys.name, sys.cases.len());
        investigated.extend(rca::run_system(&sys, &cfg.correlate.metric_roles));
        if investigate_only {
            continue;
        }
        let days = rca::days(&sys);
        let bar = indicatif::ProgressBar::new(days.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} streaming {msg}, day {pos}/{len} [{bar:30}] eta {eta}",
            )?
            .progress_chars("=> "),
        );
        bar.set_message(sys.name.clone());
        for day in &days {
            let out = rca::stream_day(cfg, &sys.calls, day)
                .await
                .with_context(|| day.name.clone())?;
            let mut with_history = 0;
            for (case, out) in day.cases.iter().zip(&out) {
                // Scored only where the series can alarm by the fault: past the warm-up.
                if day.history(case) <= i64::from(cfg.detect.warmup) {
                    continue;
                }
                with_history += 1;
                let mut sc = rca::score_streamed(case, out);
                sc.first_opened.system = sys.name.clone();
                sc.holding.system = sys.name.clone();
                sc.holding_then.system = sys.name.clone();
                streamed.push(sc.first_opened);
                holding.push(sc.holding);
                holding_then.push(sc.holding_then);
                split.push(sc.opened_in_window);
                spread.push(sc.holding_window);
            }
            coverage.push(format!(
                "{}: {} of {} cases after more than detect.warmup ({}) buckets of the day",
                day.name,
                with_history,
                day.cases.len(),
                cfg.detect.warmup
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    println!("investigate (given the entry service as the symptom and the injection time):");
    print!("{}", rca::render(&investigated));
    if !investigate_only {
        println!(
            "\nstreaming incidents: each capture day streamed once, as `seismo run` would see it; a case is\n\
             scored when the day's stream holds more than detect.warmup buckets before its fault:"
        );
        for line in &coverage {
            println!("  {line}");
        }
        println!(
            "\nstreaming incidents (no hints; the first incident opened from a bucket before the injection to five after):"
        );
        print!("{}", rca::render(&streamed));
        println!(
            "\nstreaming incidents: the incident that took the first anomaly of the fault window, whenever it opened:"
        );
        print!("{}", rca::render(&holding));
        println!(
            "\nstreaming incidents: that incident as it stood at the end of the fault window (five buckets after it):"
        );
        print!("{}", rca::render(&holding_then));
        let with = split.iter().filter(|n| **n > 0).count();
        let mut sorted = split.clone();
        sorted.sort_unstable();
        println!(
            "incidents opened in the fault window: none in {} of {} cases; median {} where any",
            split.len() - with,
            split.len(),
            sorted
                .iter()
                .filter(|n| **n > 0)
                .nth(with / 2)
                .copied()
                .unwrap_or(0)
        );
        spread.sort_unstable();
        let q = |f: f64| {
            spread
                .get(((spread.len().max(1) - 1) as f64 * f) as usize)
                .copied()
        };
        println!(
            "incidents holding the fault window's anomalies: median {}, 90th percentile {}, most {}",
            q(0.5).unwrap_or(0),
            q(0.9).unwrap_or(0),
            spread.last().copied().unwrap_or(0)
        );
    }
    eprintln!(
        "{} cases in {:.1} s",
        investigated.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(
                &serde_json::json!({"investigate": investigated, "streaming": streamed, "holding": holding, "holding_then": holding_then}),
            )?,
        )?;
    }
    Ok(())
}

#[cfg(feature = "sql")]
async fn query_cmd(
    cfg: &Config,
    sql: &str,
    tenant: &str,
    format: seismo::cli::QueryFormat,
    max_rows: Option<usize>,
) -> anyhow::Result<()> {
    use std::io::Write;
    seismo_schemas::validate_tenant(tenant)?;
    let store = pipeline::open_store(cfg).await?;
    let engine = seismo_query::QueryEngine::new(store, cfg.query);
    let a = engine.run(tenant, sql, max_rows).await?;
    let mut out = std::io::stdout().lock();
    match format {
        seismo::cli::QueryFormat::Table => {
            writeln!(out, "{}", a.to_table()?)?;
            // To stderr, so the table can be piped on its own.
            eprintln!(
                "{} row{}{} in {} ms",
                a.rows,
                if a.rows == 1 { "" } else { "s" },
                if a.truncated {
                    format!(" (cut at the row limit {}; more matched)", a.rows)
                } else {
                    String::new()
                },
                a.elapsed.as_millis()
            );
        }
        seismo::cli::QueryFormat::Json => {
            out.write_all(&a.to_json()?)?;
            writeln!(out)?;
        }
        seismo::cli::QueryFormat::Arrow => out.write_all(&a.to_arrow_ipc()?)?,
    }
    Ok(())
}

#[cfg(not(feature = "sql"))]
async fn query_cmd(
    _cfg: &Config,
    _sql: &str,
    _tenant: &str,
    _format: seismo::cli::QueryFormat,
    _max_rows: Option<usize>,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build of seismo has no SQL engine: build it with `cargo build --release --features sql`"
    )
}

async fn report_cmd(
    cfg: &Config,
    to: Option<&str>,
    tenant: String,
    out: &std::path::Path,
    top: usize,
) -> anyhow::Result<()> {
    let to = match to {
        None => chrono::Utc::now(),
        Some(t) => seismo::report::parse_end(t)?,
    };
    let store = pipeline::open_store(cfg).await?;
    let opts = seismo::report::ReportOptions {
        tenant,
        to,
        service_label: cfg.correlate.service_label.clone(),
        top,
    };
    let w = seismo::report::weekly(store.as_ref(), &opts).await?;
    seismo::report::write(&w, out)?;
    println!(
        "{} to {}: {} anomalies, {} incidents, {} capacity warnings; report in {}/report.html (and report.md, report.json)",
        w.from.format("%Y-%m-%d %H:%M"),
        w.to.format("%Y-%m-%d %H:%M UTC"),
        w.anomalies,
        w.incidents.len(),
        w.capacity.len(),
        out.display()
    );
    Ok(())
}

async fn demo_cmd(
    mut cfg: Config,
    summary_json: Option<PathBuf>,
    serve: bool,
    days: u64,
    seed: u64,
    db: String,
    no_graph: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        days >= 2,
        "--days must be at least 2: the first days teach the baselines"
    );
    demo::reset_sqlite(&db)?;
    cfg.storage.url = db;
    let store = pipeline::open_store(&cfg).await?;
    let opts = DemoOptions {
        days,
        seed,
        progress: true,
        no_graph,
    };
    let (summary, _) = demo::run(&cfg, store.clone(), &opts).await?;
    print!("{}", demo::render(&summary, &cfg.storage.url));
    if let Some(path) = summary_json {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("summary written to {}", path.display());
    }
    if serve {
        let listener = seismo::http::bind(&cfg.http.listen).await?;
        cfg.http.auth =
            seismo::http::auth_mode(&cfg, store.as_ref(), listener.local_addr()?).await?;
        println!(
            "API on http://{0} (try /api/v1/incidents); Ctrl-C to stop",
            listener.local_addr()?
        );
        let health = seismo_runtime::Health::default();
        health.stage("api").running();
        seismo::http::serve(
            listener,
            seismo::http::router(&cfg, None, Some(store), health),
            pipeline::shutdown_signal(),
            seismo::http::HttpLimits::from_config(&cfg),
        )
        .await?;
    }
    Ok(())
}

fn detect_cmd(
    cfg: &Config,
    file: &std::path::Path,
    output: Option<&std::path::Path>,
    seed: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    let header: Vec<String> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_string())
        .collect();
    let mut out = String::with_capacity(text.len() * 2);
    if header.len() == 2
        && header.contains(&"timestamp".to_string())
        && header.contains(&"value".to_string())
    {
        let s = seismo::eval::series::read_series(&text, &name)?;
        let scores = seismo::eval::series::score_series_parts(&cfg.detect, &s.ts_ms, &s.values);
        out.push_str("timestamp,value,anomaly_score,surprisal");
        for part in seismo_detect::ENSEMBLE_PARTS {
            out.push_str(&format!(",{}", part.trim_start_matches("ensemble_")));
        }
        out.push('\n');
        for ((t, v), sc) in s.timestamps.iter().zip(&s.values).zip(&scores) {
            out.push_str(&format!("{t},{v},{},{:.3}", sc.score, sc.surprisal));
            for p in sc.parts {
                out.push_str(&format!(",{p:.3}"));
            }
            out.push('\n');
        }
    } else {
        let table = seismo::eval::read_numeric_csv(file)?;
        let w = table.width();
        let label = table.column("label");
        let (features, nf) = table.features_without(label);
        anyhow::ensure!(
            nf > 0 && table.rows() > 0,
            "{name}: no numeric feature rows"
        );
        let rows = seismo_detect::Rows::new(&features, nf);
        let forest = seismo_detect::IsolationForest::fit(
            rows,
            seismo_detect::ForestParams {
                seed,
                ..Default::default()
            },
        );
        let scores = forest.score_rows(rows);
        out.push_str(&header.join(","));
        out.push_str(",anomaly_score\n");
        for (row, score) in table.data.chunks(w).zip(scores) {
            let cells: Vec<String> = row.iter().map(f64::to_string).collect();
            out.push_str(&format!("{},{}\n", cells.join(","), score));
        }
    }
    match output {
        Some(p) => std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?,
        None => std::io::stdout().lock().write_all(out.as_bytes())?,
    }
    Ok(())
}

async fn run_cmd(mut cfg: Config) -> anyhow::Result<()> {
    let store = pipeline::open_store(&cfg).await?;
    let listener = seismo::http::bind(&cfg.http.listen).await?;
    // Decided before any stage starts, so a refusal leaves nothing half-started.
    cfg.http.auth = seismo::http::auth_mode(&cfg, store.as_ref(), listener.local_addr()?).await?;
    let running = Embedded::start(&cfg, store.clone())?;
    tracing::info!(addr = %listener.local_addr()?, store = %cfg.storage.url, bus = %cfg.bus.dir, "seismo running embedded");
    let token = CancellationToken::new();
    let stop = token.clone();
    let failure = running.failure();
    let failed = tokio::spawn(async move {
        tokio::select! {
            _ = pipeline::shutdown_signal() => {
                tracing::info!("shutting down: finishing requests, checkpointing every stage");
                stop.cancel();
                None
            }
            m = failure => {
                // One rule in both modes: a stage that cannot go on stops the process.
                tracing::error!(error = %m, "a stage failed; stopping the process");
                stop.cancel();
                Some(m)
            }
        }
    });
    let router = seismo::http::router(&cfg, Some(&running), Some(store), running.health.clone());
    let feed = running.feed.clone();
    seismo::http::serve(
        listener,
        router,
        async move {
            token.cancelled().await;
            feed.close();
        },
        seismo::http::HttpLimits::from_config(&cfg),
    )
    .await?;
    let stats = running.stop().await;
    if let Ok(Some(m)) = failed.await {
        anyhow::bail!("{m}");
    }
    let stats = stats?;
    tracing::info!(
        points = stats.ingest.points,
        anomalies = stats.detect.anomalies,
        incidents = stats.correlate.incidents_created,
        "stopped; what was accepted and not yet processed resumes on the next start"
    );
    Ok(())
}

/// `seismo token ...`: tokens are written straight to the store, and each change to the
/// audit log as `cli:<user>`.
async fn token_cmd(cfg: &Config, cmd: TokenCommand) -> anyhow::Result<()> {
    let store = pipeline::open_store(cfg).await?;
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    // The API's errors hide internal details from HTTP clients; here the operator sees them.
    let plain = |e: seismo_api::ApiError| match e {
        seismo_api::ApiError::Internal(detail) => anyhow::anyhow!(detail),
        e => anyhow::anyhow!(e.to_string()),
    };
    match cmd {
        TokenCommand::Create {
            tenant,
            role,
            name,
            rate,
        } => {
            let new = seismo_api::auth::NewToken {
                tenant,
                role,
                name,
                rate_per_sec: rate,
            };
            let (token, secret) = seismo_api::auth::create_token(store.as_ref(), new, &actor)
                .await
                .map_err(plain)?;
            eprintln!(
                "created token {} (tenant {}, role {}); it is shown only this once:",
                token.id,
                token.tenant,
                token.role.as_str()
            );
            // Alone on standard output, so `TOKEN=$(seismo token create ...)` captures it.
            println!("{secret}");
        }
        TokenCommand::Revoke { id } => {
            let t = store
                .revoke_token(None, &id, &actor, chrono::Utc::now())
                .await
                .map_err(|e| match e {
                    seismo_store::StoreError::NotFound => anyhow::anyhow!("no token {id}"),
                    e => e.into(),
                })?;
            println!(
                "token {} (tenant {}, role {}) is revoked; running servers refuse it within http.auth_cache_ms ({} ms)",
                t.id,
                t.tenant,
                t.role.as_str(),
                cfg.http.auth_cache_ms
            );
        }
        TokenCommand::List { tenant } => {
            if let Some(t) = &tenant {
                seismo_schemas::validate_tenant(t)?;
            }
            let tokens = store.list_tokens(tenant.as_deref()).await?;
            println!(
                "{:<12}  {:<16}  {:<6}  {:>10}  {:<20}  {:<20}  NAME",
                "ID", "TENANT", "ROLE", "RATE", "CREATED", "REVOKED"
            );
            let time =
                |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            for t in tokens {
                println!(
                    "{:<12}  {:<16}  {:<6}  {:>10}  {:<20}  {:<20}  {}",
                    t.id,
                    t.tenant,
                    t.role.as_str(),
                    t.rate_per_sec
                        .map_or("default".to_string(), |r| r.to_string()),
                    time(t.created_at),
                    t.revoked_at.map_or("-".to_string(), time),
                    t.name
                );
            }
        }
    }
    Ok(())
}
