//! Series endpoints: the tenant's series, and one series' points beside its expected band, anomalies and newest forecast.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use seismo_schemas::{Anomaly, BandPoint, Caller, Forecast, Labels};
use seismo_store::{AnomalyQuery, SeriesQuery};
use serde::Serialize;

use crate::{ApiError, ApiResult, ApiState, caller, forecast_window, parse_params};

/// Most observed points one answer carries (the newest when more match): a week of
/// minutes.
pub const MAX_POINTS: usize = 10_080;
/// Most anomalies one answer carries (the newest when more match).
pub const MAX_ANOMALIES: usize = 1000;

/// A page of series.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct SeriesPage {
    items: Vec<SeriesItem>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct SeriesItem {
    series_id: String,
    name: String,
    labels: Labels,
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

/// `GET /api/v1/series?name&label=name:value&limit&after`: the tenant's series by id.
pub(crate) async fn list(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let p = parse_params(q, &["name", "label", "limit", "after"])?;
    let mut items = s
        .store
        .list_series(&SeriesQuery {
            tenant: who.tenant,
            series_id: None,
            name: p.name,
            labels: p.labels,
            after: p.after,
            limit: p.limit + 1,
        })
        .await?;
    let more = items.len() > p.limit;
    items.truncate(p.limit);
    let next_after = more
        .then(|| items.last().map(|i| hex(i.series_id)))
        .flatten();
    Ok(Json(SeriesPage {
        items: items
            .into_iter()
            .map(|i| SeriesItem {
                series_id: hex(i.series_id),
                name: i.name,
                labels: i.labels,
            })
            .collect(),
        next_after,
    })
    .into_response())
}

/// One series over a window.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct SeriesView {
    series_id: String,
    name: String,
    labels: Labels,
    from: i64,
    to: i64,
    /// `[time in UTC ms, value]`, oldest first; the newest `MAX_POINTS` when more.
    observed: Vec<[f64; 2]>,
    /// What the detector expected, sampled every `detect.band_every_secs`.
    band: Vec<BandPoint>,
    /// The series' anomalies in the window, newest first.
    anomalies: Vec<Anomaly>,
    /// The newest forecast run's steps in the window.
    forecast: Vec<Forecast>,
}

/// `GET /api/v1/series/{id}?from&to`: one of the tenant's series, its points in the window
/// (at most 7 days; by default the 3 days before `to`, which defaults to 2 days from now)
/// beside its expected band, anomalies and newest forecast.
pub(crate) async fn one(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let series = u64::from_str_radix(&id, 16)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a hex series id")))?;
    let p = parse_params(q, &["from", "to"])?;
    let (from, to) = forecast_window(&p, 7)?;
    // The tenant check: points and bands carry no tenant, the series table does.
    let info = s
        .store
        .list_series(&SeriesQuery {
            tenant: who.tenant.clone(),
            series_id: Some(series),
            limit: 1,
            ..Default::default()
        })
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("series {id}")))?;
    let observed = s
        .store
        .newest_points(series, from, to, MAX_POINTS)
        .await?
        .into_iter()
        .map(|(t, v)| [t as f64, v])
        .collect();
    let band = s.store.bands(&who.tenant, series, from, to).await?;
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms);
    let anomalies = s
        .store
        .list_anomalies(&AnomalyQuery {
            tenant: who.tenant.clone(),
            from: at(from),
            to: at(to),
            series_id: Some(series),
            limit: MAX_ANOMALIES,
            ..Default::default()
        })
        .await?
        .items;
    let forecast = s
        .store
        .forecasts(&who.tenant, series, from, to, true)
        .await?;
    Ok(Json(SeriesView {
        series_id: hex(series),
        name: info.name,
        labels: info.labels,
        from,
        to,
        observed,
        band,
        anomalies,
        forecast,
    })
    .into_response())
}
