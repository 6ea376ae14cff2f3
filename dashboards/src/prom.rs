//! A small client for Prometheus's HTTP query API (`/api/v1/query`,
//! `/api/v1/query_range`), enough to draw and check the dashboards' panels.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A query failed: the server could not be reached, answered an error, or answered
/// something that is not a Prometheus API response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

/// One series of a query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `(unix seconds, value)` samples; `NaN` where Prometheus answered `NaN`.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A legend for the series from a Grafana legend format (`{{label}}` replaced).
    pub fn legend(&self, format: &str) -> String {
        let mut out = format.to_owned();
        for (k, v) in &self.labels {
            out = out.replace(&format!("{{{{{k}}}}}"), v);
        }
        if out.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out = format!("{{{}}}", labels.join(","));
        }
        out
    }
}

/// A Prometheus server.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    /// A client for the server at `base` (such as `http://127.0.0.1:9090`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `expr` evaluated at `time` (unix seconds).
    pub async fn query(&self, expr: &str, time: f64) -> Result<Vec<Series>, QueryError> {
        let params = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("time", &format!("{time:.3}"))
            .finish();
        self.get(&format!("/api/v1/query?{params}")).await
    }

    /// `expr` evaluated from `start` to `end` (unix seconds) every `step` seconds.
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Series>, QueryError> {
        let params = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("start", &format!("{start:.3}"))
            .append_pair("end", &format!("{end:.3}"))
            .append_pair("step", &format!("{step}"))
            .finish();
        self.get(&format!("/api/v1/query_range?{params}")).await
    }

    async fn get(&self, path_and_query: &str) -> Result<Vec<Series>, QueryError> {
        let uri: http::Uri = format!("{}{path_and_query}", self.base)
            .parse()
            .map_err(|e| QueryError(format!("bad Prometheus URL {}: {e}", self.base)))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|e| QueryError(format!("{}: {e}", self.base)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| QueryError(format!("reading the answer: {e}")))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).map_err(|e| {
            QueryError(format!(
                "HTTP {status}, not a Prometheus API answer ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })?;
        parse_response(&json)
    }
}

/// Reads a Prometheus API answer (`vector` or `matrix`) into series.
pub fn parse_response(json: &Value) -> Result<Vec<Series>, QueryError> {
    if json["status"] != "success" {
        return Err(QueryError(format!(
            "Prometheus answered {}: {}",
            json["errorType"].as_str().unwrap_or("an error"),
            json["error"].as_str().unwrap_or("(no message)")
        )));
    }
    let result = json["data"]["result"]
        .as_array()
        .ok_or_else(|| QueryError("answer without data.result".to_owned()))?;
    let sample = |v: &Value| -> Option<(f64, f64)> {
        let t = v.get(0)?.as_f64()?;
        let x = v.get(1)?.as_str()?;
        let x = match x {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            x => x.parse().ok()?,
        };
        Some((t, x))
    };
    result
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let points = match (s.get("values"), s.get("value")) {
                (Some(values), _) => values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(sample)
                    .collect(),
                (None, Some(value)) => sample(value).into_iter().collect(),
                (None, None) => Vec::new(),
            };
            Ok(Series { labels, points })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matrix_and_vector_answers_read() {
        let m = json!({"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"downstream":"a"},"values":[[1.0,"1"],[2.0,"NaN"]]}]}});
        let s = parse_response(&m).unwrap();
        assert_eq!(s[0].labels["downstream"], "a");
        assert_eq!(s[0].points[0], (1.0, 1.0));
        assert!(s[0].points[1].1.is_nan());
        assert_eq!(s[0].legend("to {{downstream}}"), "to a");
        let v = json!({"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"value":[3.5,"2"]}]}});
        assert_eq!(parse_response(&v).unwrap()[0].points, vec![(3.5, 2.0)]);
        let e = json!({"status":"error","errorType":"bad_data","error":"parse error"});
        assert_eq!(
            parse_response(&e).unwrap_err().to_string(),
            "Prometheus answered bad_data: parse error"
        );
    }
}
