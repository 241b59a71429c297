//! The HTTP API's OpenAPI 3.1 description: every route's parameters, bodies and answers, with the JSON Schemas of what they carry generated from the Rust types.
//!
//! The schemas come from schemars, which already generates the canonical types' JSON
//! Schemas (`schemas/json/`): OpenAPI 3.1 takes JSON Schema 2020-12 as it is, so one
//! derive per type serves both. The routes' paths are those `router()` registers (a test
//! holds the two in step, and calls every documented operation).

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use seismo_schemas::{AlertmanagerWebhook, Anomaly, Forecast, IncidentChange, MetricPoint};
use serde_json::{Map, Value, json};

/// The ingest routes (served where a pipeline runs: embedded mode, the ingest stage).
pub const INGEST_PATHS: [&str; 3] = [
    "/api/v1/ingest/points",
    "/api/v1/ingest/alertmanager",
    "/api/v1/write",
];

/// Schemas of answers (what the server writes) and of requests (what it reads) differ
/// where serde skips a field one way only, so each has its own generator; both put their
/// definitions under `components/schemas`.
struct Schemas {
    out: SchemaGenerator,
    input: SchemaGenerator,
}

impl Schemas {
    fn new() -> Self {
        let make = |contract: Contract| {
            SchemaSettings::draft2020_12()
                .with(|s| {
                    s.definitions_path = "/components/schemas".into();
                    s.meta_schema = None;
                    s.contract = contract;
                })
                .into_generator()
        };
        Schemas {
            out: make(Contract::Serialize),
            input: make(Contract::Deserialize),
        }
    }

    /// A reference to (or the inline schema of) an answer's type.
    fn answer<T: JsonSchema>(&mut self) -> Value {
        self.out.subschema_for::<T>().to_value()
    }

    fn request<T: JsonSchema>(&mut self) -> Value {
        self.input.subschema_for::<T>().to_value()
    }

    fn components(mut self) -> Map<String, Value> {
        let mut all = self.out.take_definitions(true);
        for (k, v) in self.input.take_definitions(true) {
            match all.get(&k) {
                Some(existing) if *existing != v => {
                    // The same name with another shape as a request: keep both apart.
                    all.insert(format!("{k}Input"), v);
                }
                _ => {
                    all.insert(k, v);
                }
            }
        }
        all.insert(
            "Error".into(),
            json!({
                "type": "object",
                "description": "Why a request was refused or failed; `limit` names the option that refused it, when one did.",
                "properties": {
                    "error": {"type": "string"},
                    "limit": {"type": "string"}
                },
                "required": ["error"]
            }),
        );
        all
    }
}

fn param(name: &str, place: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": place,
        "required": place == "path",
        "description": description,
        "schema": schema,
    })
}

fn q(name: &str, description: &str) -> Value {
    param(name, "query", description, json!({"type": "string"}))
}

fn time_q(name: &str) -> Value {
    q(
        name,
        &format!(
            "The window's {} end: RFC 3339 or epoch milliseconds.",
            if name == "from" { "earlier" } else { "later" }
        ),
    )
}

fn limit_q() -> Value {
    param(
        "limit",
        "query",
        "Items per page, 1 to 1000 (default 100).",
        json!({"type": "integer", "minimum": 1, "maximum": 1000}),
    )
}

fn label_q() -> Value {
    param(
        "label",
        "query",
        "`name:value`; repeat it to require several labels.",
        json!({"type": "array", "items": {"type": "string"}}),
    )
    .as_object()
    .cloned()
    .map(|mut o| {
        o.insert("style".into(), "form".into());
        o.insert("explode".into(), true.into());
        Value::Object(o)
    })
    .expect("an object")
}

fn id_path(what: &str) -> Value {
    param("id", "path", what, json!({"type": "string"}))
}

fn json_body(schema: Value) -> Value {
    json!({"content": {"application/json": {"schema": schema}}})
}

/// The error answers every authenticated route may give, and the ones named.
fn answers(ok: &[(u16, &str, Option<Value>)], errors: &[u16], public: bool) -> Value {
    let mut out = Map::new();
    for (code, description, body) in ok {
        let mut r = json!({"description": description});
        if let Some(b) = body {
            r["content"] = b.get("content").cloned().unwrap_or_else(|| b.clone());
        }
        out.insert(code.to_string(), r);
    }
    let mut codes: Vec<u16> = errors.to_vec();
    if !public {
        // The authentication layer: no or a bad token, a role too low, a malformed
        // `X-Seismo-Tenant`, or the token store unreachable.
        codes.extend([400, 401, 403, 503]);
    }
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        let description = match code {
            400 => "The request is malformed; the error says why.",
            401 => "No valid token (`Authorization: Bearer smo_…`).",
            403 => "The token's role may not do this, or names another tenant.",
            404 => "Not found for the caller's tenant.",
            409 => "The lifecycle forbids this step.",
            422 => "Understood, but it went past a limit (the answer names it).",
            501 => "This build lacks the part that would answer (the answer says how to build it).",
            408 => "The body did not arrive in time (`http.body_timeout_ms`).",
            413 => "Beyond a request size limit (the answer names it).",
            415 => "An unsupported content type or encoding.",
            429 => "Beyond the token's ingest rate; retry after `Retry-After` seconds.",
            503 => {
                "Not now: the bus is full, too much is in flight, or the service is unavailable; safe to retry."
            }
            _ => "Failed.",
        };
        out.insert(
            code.to_string(),
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }),
        );
    }
    Value::Object(out)
}

struct Op {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    /// The least role that may call it; `None` for public routes.
    role: Option<&'static str>,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn document() -> Value {
    let mut s = Schemas::new();
    let anomalies = s.answer::<seismo_store::Page<Anomaly>>();
    let incidents = s.answer::<seismo_store::Page<seismo_schemas::Incident>>();
    let detail = s.answer::<crate::IncidentDetail>();
    let incident = s.answer::<seismo_schemas::Incident>();
    let forecast = s.answer::<Forecast>();
    let series_page = s.answer::<crate::series::SeriesPage>();
    let series_view = s.answer::<crate::series::SeriesView>();
    let answer = s.answer::<seismo_correlate::investigate::Answer>();
    let silence = s.answer::<seismo_store::Silence>();
    let token = s.answer::<seismo_store::ApiToken>();
    let audit = s.answer::<seismo_store::Page<seismo_store::AuditEntry>>();
    let change = s.answer::<IncidentChange>();
    let transition_body = s.request::<crate::TransitionBody>();
    let question = s.request::<seismo_correlate::investigate::Question>();
    let query = s.request::<crate::query::QueryRequest>();
    let query_answer = s.answer::<crate::query::QueryAnswer>();
    let new_silence = s.request::<crate::silences::NewSilence>();
    let new_token = s.request::<crate::admin::CreateBody>();
    let webhook = s.request::<AlertmanagerWebhook>();
    let point = s.request::<MetricPoint>();
    let explanation = json!({
        "type": "object",
        "description": "The incident's explanation as the explain stage stored it: summary, hypotheses with the evidence ids they cite, next checks, runbooks, grounding and usage (the explain crate's IncidentExplanation)."
    });
    let ok_json = |schema: &Value| Some(json_body(schema.clone()));
    let ops = vec![
        Op {
            method: "get",
            path: "/api/v1/anomalies",
            tag: "results",
            summary: "List anomalies, newest first",
            description: "Anomalies of the caller's tenant, filtered by time, labels, score and series; pages with `cursor`.",
            role: Some("read"),
            params: vec![
                time_q("from"),
                time_q("to"),
                label_q(),
                param(
                    "min_score",
                    "query",
                    "Lowest score, 0..1.",
                    json!({"type": "number", "minimum": 0, "maximum": 1}),
                ),
                q("series_id", "A series id (16 hex digits)."),
                limit_q(),
                q("cursor", "`next_cursor` of the previous page."),
            ],
            body: None,
            responses: answers(
                &[(200, "A page of anomalies.", ok_json(&anomalies))],
                &[400],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/incidents",
            tag: "incidents",
            summary: "List incidents, newest first",
            description: "`label=service:db` or `label=host:h1` finds the incidents whose scope lists that value.",
            role: Some("read"),
            params: vec![
                time_q("from"),
                time_q("to"),
                q(
                    "status",
                    "DETECTED, ACKNOWLEDGED, INVESTIGATING, MITIGATED, RESOLVED, LEARNED or INCONCLUSIVE.",
                ),
                label_q(),
                limit_q(),
                q("cursor", "`next_cursor` of the previous page."),
            ],
            body: None,
            responses: answers(
                &[(200, "A page of incidents.", ok_json(&incidents))],
                &[400],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/incidents/{id}",
            tag: "incidents",
            summary: "One incident",
            description: "With its timeline, at most 1,000 of its anomalies, its explanation and the pages sent about it.",
            role: Some("read"),
            params: vec![id_path("The incident id.")],
            body: None,
            responses: answers(&[(200, "The incident.", ok_json(&detail))], &[404], false),
        },
        Op {
            method: "post",
            path: "/api/v1/incidents/{id}/transition",
            tag: "incidents",
            summary: "Move an incident through its lifecycle",
            description: "Records the step on the timeline and in the audit log, and announces it on `seismo.incidents` (pagers follow).",
            role: Some("write"),
            params: vec![id_path("The incident id.")],
            body: Some(json_body(transition_body)),
            responses: answers(
                &[(200, "The incident after the step.", ok_json(&incident))],
                &[400, 404, 409],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/incidents/{id}/explanation",
            tag: "incidents",
            summary: "The incident's explanation",
            description: "The newest explanation the explain stage stored.",
            role: Some("read"),
            params: vec![id_path("The incident id.")],
            body: None,
            responses: answers(
                &[(200, "The explanation.", ok_json(&explanation))],
                &[404],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/incidents/{id}/explanation",
            tag: "incidents",
            summary: "Explain the incident again",
            description: "Regenerates the explanation now (by the configured model, or the template).",
            role: Some("write"),
            params: vec![id_path("The incident id.")],
            body: None,
            responses: answers(
                &[(200, "The new explanation.", ok_json(&explanation))],
                &[404, 409, 503],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/incidents/{id}/postmortem",
            tag: "incidents",
            summary: "A post-mortem draft",
            description: "Drafted from the incident's facts and timeline.",
            role: Some("read"),
            params: vec![id_path("The incident id.")],
            body: None,
            responses: answers(
                &[(
                    200,
                    "The draft, in Markdown.",
                    Some(json!({"text/markdown": {"schema": {"type": "string"}}})),
                )],
                &[404],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/investigate",
            tag: "incidents",
            summary: "Rank root-cause candidates for a symptom",
            description: "Name a service (or a series by its labels) and when its symptom began; candidates are ranked from the stored points.",
            role: Some("read"),
            params: vec![],
            body: Some(json_body(question)),
            responses: answers(
                &[(200, "The ranked candidates.", ok_json(&answer))],
                &[400],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/query",
            tag: "results",
            summary: "Read-only SQL over the caller's result tables",
            description: "One SELECT, WITH or EXPLAIN over anomalies, incidents, incident_anomalies, incident_events, alerts, series, forecasts and bands, each holding only the caller's tenant's rows (the tenant is bound inside every scan). Answers JSON, or an Arrow IPC stream with `format: arrow` or `Accept: application/vnd.apache.arrow.stream`; `X-Seismo-Truncated` and `X-Seismo-Row-Count` say whether the row limit cut it. Stops at the server's `query` time and memory limits (422). Writes, DDL and `SET` are refused (400).",
            role: Some("read"),
            params: vec![],
            body: Some(json_body(query)),
            responses: answers(
                &[(
                    200,
                    "The rows.",
                    Some(json!({
                        "application/json": {"schema": query_answer},
                        "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}}
                    })),
                )],
                &[400, 422, 501],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/forecasts",
            tag: "results",
            summary: "A series' forecast rows",
            description: "In the window (at most 90 days), from the newest run (default) or every run.",
            role: Some("read"),
            params: vec![
                q("series_id", "The series id (16 hex digits); required."),
                time_q("from"),
                time_q("to"),
                q("runs", "`latest` (default) or `all`."),
            ],
            body: None,
            responses: answers(
                &[(
                    200,
                    "The forecast rows.",
                    ok_json(&json!({
                        "type": "object",
                        "properties": {
                            "series_id": {"type": "string"},
                            "runs": {"type": "string", "enum": ["latest", "all"]},
                            "forecasts": {"type": "array", "items": forecast}
                        },
                        "required": ["series_id", "runs", "forecasts"]
                    })),
                )],
                &[400],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/series",
            tag: "results",
            summary: "List the tenant's series",
            description: "By metric name and labels, in pages by id.",
            role: Some("read"),
            params: vec![
                q("name", "A metric name."),
                label_q(),
                limit_q(),
                q("after", "`next_after` of the previous page."),
            ],
            body: None,
            responses: answers(
                &[(200, "A page of series.", ok_json(&series_page))],
                &[400],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/series/{id}",
            tag: "results",
            summary: "One series over a window",
            description: "Its points (the newest 10,080) beside the detector's expected band, its anomalies and the newest forecast, over at most 7 days (by default the 3 days before `to`, which defaults to 2 days from now).",
            role: Some("read"),
            params: vec![
                id_path("The series id (16 hex digits)."),
                time_q("from"),
                time_q("to"),
            ],
            body: None,
            responses: answers(
                &[(200, "The series.", ok_json(&series_view))],
                &[400, 404],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/series/{id}/forecast",
            tag: "results",
            summary: "Observed values beside the newest forecast",
            description: "Over at most 7 days.",
            role: Some("read"),
            params: vec![
                id_path("The series id (16 hex digits)."),
                time_q("from"),
                time_q("to"),
            ],
            body: None,
            responses: answers(
                &[(
                    200,
                    "Observed values and forecast.",
                    ok_json(&json!({
                        "type": "object",
                        "properties": {
                            "series_id": {"type": "string"},
                            "observed": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
                            "forecast": {"type": "array", "items": forecast}
                        },
                        "required": ["series_id", "observed", "forecast"]
                    })),
                )],
                &[400, 404],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/stream/incidents",
            tag: "incidents",
            summary: "Live incident changes (server-sent events)",
            description: "One event per change of the caller's tenant's incidents as it is published: `event:` the change kind, `id:` the change id, `data:` the change as JSON (schema `IncidentChange`); a `lagged` event tells a slow client how many it missed.",
            role: Some("read"),
            params: vec![q(
                "kind",
                "Comma-separated change kinds to keep (opened, escalated, signal_added, alert_resolved, acknowledged, resolved, reopened, status_changed).",
            )],
            body: None,
            responses: answers(
                &[(
                    200,
                    "The event stream.",
                    Some(json!({"text/event-stream": {
                        "schema": {"type": "string", "description": "Server-sent events; each `data:` is an IncidentChange (x-event-data)."},
                        "x-event-data": change
                    }})),
                )],
                &[400, 503],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/silences",
            tag: "paging",
            summary: "List silences",
            description: "Those not ended yet; `expired=true` lists all.",
            role: Some("read"),
            params: vec![q("expired", "`true` to include ended silences.")],
            body: None,
            responses: answers(
                &[(
                    200,
                    "The silences.",
                    ok_json(
                        &json!({"type": "object", "properties": {"items": {"type": "array", "items": silence.clone()}}, "required": ["items"]}),
                    ),
                )],
                &[400],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/silences",
            tag: "paging",
            summary: "Create a silence",
            description: "Pages about the tenant's incidents matching every matcher (`name=value`, `name!=value`) are held until it ends.",
            role: Some("write"),
            params: vec![],
            body: Some(json_body(new_silence)),
            responses: answers(&[(200, "The silence.", ok_json(&silence))], &[400], false),
        },
        Op {
            method: "delete",
            path: "/api/v1/silences/{id}",
            tag: "paging",
            summary: "End a silence now",
            description: "Held pages that still apply go out.",
            role: Some("write"),
            params: vec![id_path("The silence id.")],
            body: None,
            responses: answers(
                &[(200, "The ended silence.", ok_json(&silence))],
                &[404],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/tokens",
            tag: "access",
            summary: "List the tenant's tokens",
            description: "Revoked ones included; never their secrets.",
            role: Some("admin"),
            params: vec![],
            body: None,
            responses: answers(
                &[(
                    200,
                    "The tokens.",
                    ok_json(
                        &json!({"type": "object", "properties": {"items": {"type": "array", "items": token.clone()}}, "required": ["items"]}),
                    ),
                )],
                &[],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/tokens",
            tag: "access",
            summary: "Create a token",
            description: "The answer is the only one to carry the whole token (`token`).",
            role: Some("admin"),
            params: vec![],
            body: Some(json_body(new_token)),
            responses: answers(
                &[(
                    201,
                    "The token, with its secret.",
                    ok_json(
                        &json!({"allOf": [token.clone(), {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}]}),
                    ),
                )],
                &[400],
                false,
            ),
        },
        Op {
            method: "delete",
            path: "/api/v1/tokens/{id}",
            tag: "access",
            summary: "Revoke a token",
            description: "It stops working at once on this process, within `http.auth_cache_ms` on others.",
            role: Some("admin"),
            params: vec![id_path("The token id (its public part).")],
            body: None,
            responses: answers(
                &[(200, "The revoked token.", ok_json(&token))],
                &[404],
                false,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/audit",
            tag: "access",
            summary: "The audit log, newest first",
            description: "Who transitioned which incident and who created or revoked which token.",
            role: Some("admin"),
            params: vec![
                time_q("from"),
                time_q("to"),
                limit_q(),
                q("cursor", "`next_cursor` of the previous page."),
            ],
            body: None,
            responses: answers(
                &[(200, "A page of audit entries.", ok_json(&audit))],
                &[400],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/ingest/points",
            tag: "ingest",
            summary: "Send points",
            description: "Newline-delimited JSON, one point per line (gzip allowed). 202 once every accepted point is on the bus; refused lines are counted and reported.",
            role: Some("ingest"),
            params: vec![],
            body: Some(json!({"content": {"application/x-ndjson": {
                "schema": {"type": "string", "description": "One JSON MetricPoint per line (x-line-schema)."},
                "x-line-schema": point
            }}})),
            responses: answers(
                &[(
                    202,
                    "Accepted: counts of accepted and refused lines.",
                    Some(json_body(json!({"type": "object"}))),
                )],
                &[400, 413, 429, 503],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/ingest/alertmanager",
            tag: "ingest",
            summary: "Alertmanager webhook",
            description: "Payload version 4.",
            role: Some("ingest"),
            params: vec![],
            body: Some(json_body(webhook)),
            responses: answers(
                &[(202, "Accepted.", Some(json_body(json!({"type": "object"}))))],
                &[400, 413, 429, 503],
                false,
            ),
        },
        Op {
            method: "post",
            path: "/api/v1/write",
            tag: "ingest",
            summary: "Prometheus remote_write",
            description: "A snappy-compressed protobuf WriteRequest (remote_write 1.0).",
            role: Some("ingest"),
            params: vec![],
            body: Some(
                json!({"content": {"application/x-protobuf": {"schema": {"type": "string", "contentMediaType": "application/x-protobuf", "contentEncoding": "snappy"}}}}),
            ),
            responses: answers(&[(204, "Accepted.", None)], &[400, 413, 429, 503], false),
        },
        Op {
            method: "get",
            path: "/healthz",
            tag: "operations",
            summary: "Liveness",
            description: "The process answers.",
            role: None,
            params: vec![],
            body: None,
            responses: answers(
                &[(
                    200,
                    "Alive.",
                    Some(json_body(
                        json!({"type": "object", "properties": {"status": {"type": "string"}}}),
                    )),
                )],
                &[],
                true,
            ),
        },
        Op {
            method: "get",
            path: "/readyz",
            tag: "operations",
            summary: "Readiness",
            description: "200 when every stage of the process runs; 503 with each stage's state, last error and lag otherwise.",
            role: None,
            params: vec![],
            body: None,
            responses: answers(
                &[
                    (200, "Ready.", Some(json_body(json!({"type": "object"})))),
                    (
                        503,
                        "A stage retries, is stuck or failed.",
                        Some(json_body(json!({"type": "object"}))),
                    ),
                ],
                &[],
                true,
            ),
        },
        Op {
            method: "get",
            path: "/metrics",
            tag: "operations",
            summary: "Prometheus metrics",
            description: "Text exposition format.",
            role: None,
            params: vec![],
            body: None,
            responses: answers(
                &[(
                    200,
                    "Metrics.",
                    Some(json!({"text/plain": {"schema": {"type": "string"}}})),
                )],
                &[],
                true,
            ),
        },
        Op {
            method: "get",
            path: "/api/v1/openapi.json",
            tag: "operations",
            summary: "This description",
            description: "OpenAPI 3.1.",
            role: None,
            params: vec![],
            body: None,
            responses: answers(
                &[(
                    200,
                    "The document.",
                    Some(json_body(json!({"type": "object"}))),
                )],
                &[],
                true,
            ),
        },
    ];
    let mut paths = Map::new();
    for mut op in ops {
        // Every body passes the size and time limits in front of the handlers, and the
        // ingest routes check its type and encoding.
        if op.body.is_some() {
            let mut extra = vec![408, 413];
            if INGEST_PATHS.contains(&op.path) {
                extra.push(415);
            }
            let have = op.responses.as_object().expect("responses").clone();
            let missing: Vec<u16> = extra
                .into_iter()
                .filter(|c| !have.contains_key(&c.to_string()))
                .collect();
            for (k, v) in answers(&[], &missing, true).as_object().expect("responses") {
                op.responses[k] = v.clone();
            }
        }
        let mut o = json!({
            "tags": [op.tag],
            "summary": op.summary,
            "description": match op.role {
                Some(r) => format!("{} Role: `{r}` or above.", op.description),
                None => format!("{} No token needed.", op.description),
            },
            "operationId": operation_id(op.method, op.path),
            "responses": op.responses,
        });
        if !op.params.is_empty() {
            o["parameters"] = Value::Array(op.params);
        }
        if let Some(b) = op.body {
            let mut b = b;
            b["required"] = true.into();
            o["requestBody"] = b;
        }
        if op.role.is_none() {
            o["security"] = json!([]);
        }
        paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item")
            .insert(op.method.to_string(), o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Seismo",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Streaming anomaly detection and incident correlation for telemetry: ingest, results, incidents, paging and access. Every answer concerns the caller's tenant (the token's, or `X-Seismo-Tenant` for an admin).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "ingest", "description": "Points and alerts in."},
            {"name": "results", "description": "Anomalies, series, bands and forecasts."},
            {"name": "incidents", "description": "Incidents, their lifecycle, explanations and investigations."},
            {"name": "paging", "description": "Silences."},
            {"name": "access", "description": "Tokens and the audit log."},
            {"name": "operations", "description": "Health, metrics and this description."}
        ],
        "paths": paths,
        "components": {
            "schemas": s.components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API token `smo_…` (`seismo token create`)."}
            }
        }
    })
}

/// `get /api/v1/series/{id}` → `getApiV1SeriesId`.
fn operation_id(method: &str, path: &str) -> String {
    let mut out = method.to_string();
    for part in path
        .split(['/', '.', '{', '}', '_'])
        .filter(|p| !p.is_empty())
    {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    out
}
