//! The metrics a dashboard may use: families with their type, labels and label
//! values, read from Prometheus text exposition or from the demo's contract table.

use std::collections::{BTreeMap, BTreeSet};

/// The order demo's own series, as agreed in the metrics contract (its HTTP server
/// and client durations, orders, and the running scenario). One family per line:
/// `name type label=value|value ...`; a label with no values (`http_route`, `peer`)
/// takes values from configuration and is not checked.
///
/// Every Palisade layer's families come from a real `/metrics` render instead (see
/// `tests/metrics_names.rs`); these are the demo's alone, and `dashboards/live-check.sh`
/// verifies them against the running demo in CI (every panel query must return data).
pub const DEMO_CONTRACT: &str = "\
http_server_request_duration_seconds histogram service=gateway|order|customer|inventory|payment|shipment|catalog http_route http_request_method http_response_status_code
http_client_request_duration_seconds histogram service=gateway|order|customer|inventory|payment|shipment|catalog peer http_request_method http_response_status_code
demo_orders_total counter outcome=placed|failed|compensated
demo_scenario_active gauge scenario=baseline|inventory_errors|inventory_replica_dead|payment_latency|catalog_outage|customer_outage|overload_spike mode=palisade|plain
";

/// A metric family: its type and, per label, the values seen (`None`: any value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Family {
    /// `counter`, `gauge`, `histogram` or `summary`.
    pub kind: String,
    /// Label names, each with its known values, or `None` where any value is fine.
    pub labels: BTreeMap<String, Option<BTreeSet<String>>>,
}

/// Known metric families by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    families: BTreeMap<String, Family>,
}

/// Labels whose values come from configuration, never checked against a closed set.
pub const OPEN_LABELS: &[&str] = &[
    "downstream",
    "peer",
    "http_route",
    "http_request_method",
    "http_response_status_code",
    "instance",
    "job",
];

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Families from Prometheus text exposition (as `/metrics` serves it).
    pub fn from_exposition(text: &str) -> Self {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    families.entry(name.to_owned()).or_default().kind = kind.to_owned();
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels) = match line.find('{') {
                Some(open) => (
                    &line[..open],
                    &line[open + 1..line.rfind('}').unwrap_or(line.len())],
                ),
                None => (line.split_whitespace().next().unwrap_or_default(), ""),
            };
            let family_name = family_of(name, &families);
            let Some(family) = families.get_mut(&family_name) else {
                continue;
            };
            for (label, value) in parse_labels(labels) {
                if label == "le" || label == "quantile" {
                    continue;
                }
                let values = family
                    .labels
                    .entry(label.clone())
                    .or_insert_with(|| Some(BTreeSet::new()));
                if OPEN_LABELS.contains(&label.as_str()) {
                    *values = None;
                } else if let Some(values) = values {
                    values.insert(value);
                }
            }
        }
        Self { families }
    }

    /// Families from a contract table in the format of [`DEMO_CONTRACT`].
    pub fn from_contract(text: &str) -> Result<Self, String> {
        let mut families = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                return Err(format!("contract line without a name and a type: `{line}`"));
            };
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!(
                    "contract line with unknown type `{kind}`: `{line}`"
                ));
            }
            let mut family = Family {
                kind: kind.to_owned(),
                labels: BTreeMap::new(),
            };
            for label in parts {
                match label.split_once('=') {
                    Some((label, values)) => {
                        family.labels.insert(
                            label.to_owned(),
                            Some(values.split('|').map(str::to_owned).collect()),
                        );
                    }
                    None => {
                        family.labels.insert(label.to_owned(), None);
                    }
                }
            }
            families.insert(name.to_owned(), family);
        }
        Ok(Self { families })
    }

    /// Adds `other`'s families (its entries win).
    pub fn merge(&mut self, other: Catalog) {
        self.families.extend(other.families);
    }

    /// The family names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.families.keys().map(String::as_str)
    }

    /// A family by its name.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// The family a sample name belongs to, and the sample's suffix
    /// (`_bucket`, `_count`, `_sum` for a histogram's series; `""` otherwise).
    pub fn resolve(&self, sample: &str) -> Option<(&str, &Family, &'static str)> {
        if let Some((name, family)) = self.families.get_key_value(sample)
            && family.kind != "histogram"
            && family.kind != "summary"
        {
            return Some((name, family, ""));
        }
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && let Some((name, family)) = self.families.get_key_value(base)
                && (family.kind == "histogram" || (family.kind == "summary" && suffix != "_bucket"))
            {
                return Some((name, family, suffix));
            }
        }
        None
    }
}

fn family_of(sample: &str, families: &BTreeMap<String, Family>) -> String {
    if families.contains_key(sample) {
        return sample.to_owned();
    }
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && families.contains_key(base)
        {
            return base.to_owned();
        }
    }
    sample.to_owned()
}

/// `a="x",b="y"` into pairs (values unescaped for `\"` and `\\`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(if next == 'n' { '\n' } else { next });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name, value));
        rest = &rest[end.min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_gives_types_labels_and_values() {
        let text = "\
# HELP x_total Things.
# TYPE x_total counter
x_total{downstream=\"a\",outcome=\"ok\"} 1
x_total{downstream=\"b\",outcome=\"bad \\\"q\\\"\"} 0
# TYPE h_seconds histogram
h_seconds_bucket{downstream=\"a\",le=\"0.1\"} 0
h_seconds_sum{downstream=\"a\"} 0
h_seconds_count{downstream=\"a\"} 0
";
        let c = Catalog::from_exposition(text);
        let x = c.family("x_total").unwrap();
        assert_eq!(x.kind, "counter");
        assert_eq!(x.labels["downstream"], None);
        let outcomes: Vec<_> = x.labels["outcome"]
            .as_ref()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        assert_eq!(outcomes, ["bad \"q\"", "ok"]);
        let (name, h, suffix) = c.resolve("h_seconds_bucket").unwrap();
        assert_eq!(
            (name, h.kind.as_str(), suffix),
            ("h_seconds", "histogram", "_bucket")
        );
        assert!(!h.labels.contains_key("le"));
        assert!(c.resolve("h_seconds").is_none());
        assert!(c.resolve("y_total").is_none());
    }

    #[test]
    fn the_contract_table_reads() {
        let c = Catalog::from_contract(DEMO_CONTRACT).unwrap();
        assert_eq!(c.family("demo_orders_total").unwrap().kind, "counter");
        assert!(
            c.resolve("http_server_request_duration_seconds_bucket")
                .is_some()
        );
        assert!(Catalog::from_contract("x_total countr downstream").is_err());
    }
}
