//! Checks that keep the dashboards working: each returns the problems it found, one
//! sentence each, naming the panel.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use serde_json::Value;

use crate::catalog::{Catalog, OPEN_LABELS};
use crate::{
    BUILTIN_VARIABLES, Query, annotations, live_value, panels, queries, substitute, variables,
};

/// What `$__rate_interval` becomes when checking: a range no dashboard would write,
/// so every range vector can be traced back to it.
pub const RATE_INTERVAL_MARKER: &str = "1111ms";
/// What the other interval variables (`$__interval`, `$__range`) become when checking.
pub const OTHER_INTERVAL_MARKER: &str = "2222ms";

/// Functions that take a counter's range vector.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "resets"];

/// Parses a dashboard expression after substituting its variables: the dashboard's
/// own (query variables become a regex, custom ones their first value) and
/// Grafana's interval variables (see [`RATE_INTERVAL_MARKER`]).
pub fn parse(dashboard: &Value, expr: &str) -> Result<Expr, String> {
    let text = substitute(expr, |name| match name {
        "__rate_interval" => Some(RATE_INTERVAL_MARKER.to_owned()),
        n if BUILTIN_VARIABLES.contains(&n) => Some(OTHER_INTERVAL_MARKER.to_owned()),
        n => live_value(dashboard, n, RATE_INTERVAL_MARKER),
    })?;
    parser::parse(&text).map_err(|e| format!("does not parse: {e}\n  {text}"))
}

/// A vector selector met while walking an expression.
#[derive(Debug)]
pub struct Selector<'a> {
    /// The selector.
    pub selector: &'a VectorSelector,
    /// Its range, when it is a range vector.
    pub range: Option<Duration>,
    /// The function it is the argument of, if any.
    pub function: Option<&'static str>,
}

/// Every vector selector of `expr`.
pub fn selectors(expr: &Expr) -> Vec<Selector<'_>> {
    fn walk<'a>(expr: &'a Expr, function: Option<&'static str>, out: &mut Vec<Selector<'a>>) {
        match expr {
            Expr::Aggregate(a) => {
                walk(&a.expr, None, out);
                if let Some(p) = &a.param {
                    walk(p, None, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, None, out),
            Expr::Binary(b) => {
                walk(&b.lhs, None, out);
                walk(&b.rhs, None, out);
            }
            Expr::Paren(p) => walk(&p.expr, function, out),
            Expr::Subquery(s) => walk(&s.expr, None, out),
            Expr::VectorSelector(vs) => out.push(Selector {
                selector: vs,
                range: None,
                function,
            }),
            Expr::MatrixSelector(ms) => out.push(Selector {
                selector: &ms.vs,
                range: Some(ms.range),
                function,
            }),
            Expr::Call(c) => {
                for arg in &c.args.args {
                    walk(arg, Some(c.func.name), out);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, None, &mut out);
    out
}

/// The metric names an expression reads.
pub fn metric_names(expr: &Expr) -> BTreeSet<String> {
    selectors(expr)
        .into_iter()
        .filter_map(|s| selector_name(s.selector))
        .collect()
}

fn selector_name(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone())
    })
}

fn what(q: &Query) -> String {
    match q.panel_id {
        Some(id) => format!("panel {id} \"{}\"", q.title),
        None => format!("annotation \"{}\"", q.title),
    }
}

/// Structure: panel ids unique, data sources known, a unit on every querying panel,
/// every variable used defined, every expression parses, and every range vector is
/// `[$__rate_interval]`.
pub fn structure(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for panel in panels(dashboard) {
        let title = panel
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(id) = panel.get("id").and_then(Value::as_u64) else {
            problems.push(format!("panel \"{title}\" has no id"));
            continue;
        };
        if let Some(other) = seen.insert(id, title) {
            problems.push(format!(
                "panel id {id} is used twice (\"{other}\" and \"{title}\")"
            ));
        }
        let targets = panel.get("targets").and_then(Value::as_array);
        let querying = targets.is_some_and(|t| !t.is_empty());
        if querying {
            let unit = panel
                .pointer("/fieldConfig/defaults/unit")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if unit.trim().is_empty() {
                problems.push(format!("panel {id} \"{title}\" has no unit"));
            }
            check_datasource(
                panel.get("datasource"),
                &format!("panel {id} \"{title}\""),
                false,
                &mut problems,
            );
        }
        for target in targets.into_iter().flatten() {
            check_datasource(
                target.get("datasource"),
                &format!("a target of panel {id} \"{title}\""),
                false,
                &mut problems,
            );
        }
        if panel
            .get("repeat")
            .and_then(Value::as_str)
            .is_some_and(|v| !has_variable(dashboard, v))
        {
            problems.push(format!(
                "panel {id} \"{title}\" repeats over an unknown variable"
            ));
        }
    }
    for annotation in annotations(dashboard) {
        let name = annotation
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let builtin = annotation.get("builtIn").and_then(Value::as_u64) == Some(1);
        check_datasource(
            annotation.get("datasource"),
            &format!("annotation \"{name}\""),
            builtin,
            &mut problems,
        );
    }
    for variable in variables(dashboard) {
        if variable.get("type").and_then(Value::as_str) == Some("query") {
            let name = variable
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            check_datasource(
                variable.get("datasource"),
                &format!("variable \"{name}\""),
                false,
                &mut problems,
            );
            let query = variable
                .pointer("/query/query")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Err(e) = check_label_values(query) {
                problems.push(format!("variable \"{name}\": {e}"));
            }
        }
    }
    if !variables(dashboard).iter().any(|v| {
        v.get("name").and_then(Value::as_str) == Some("datasource")
            && v.get("type").and_then(Value::as_str) == Some("datasource")
            && v.get("query").and_then(Value::as_str) == Some("prometheus")
    }) {
        problems.push("no `datasource` variable of type datasource for Prometheus".to_owned());
    }
    for q in queries(dashboard) {
        let expr = match parse(dashboard, &q.expr) {
            Ok(expr) => expr,
            Err(e) => {
                problems.push(format!("{}: {e}", what(&q)));
                continue;
            }
        };
        for s in selectors(&expr) {
            if let Some(range) = s.range
                && range != Duration::from_millis(1111)
            {
                problems.push(format!(
                    "{}: a range vector over {range:?} instead of [$__rate_interval]",
                    what(&q)
                ));
            }
        }
    }
    problems
}

fn has_variable(dashboard: &Value, name: &str) -> bool {
    variables(dashboard)
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

/// `label_values(<selector>, <label>)`: the selector must parse.
fn check_label_values(query: &str) -> Result<(), String> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .ok_or_else(|| format!("`{query}` is not label_values(<selector>, <label>)"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .ok_or_else(|| format!("`{query}` names no label"))?;
    if label.trim().is_empty() {
        return Err(format!("`{query}` names no label"));
    }
    parser::parse(selector.trim())
        .map(|_| ())
        .map_err(|e| format!("selector of `{query}` does not parse: {e}"))
}

fn check_datasource(ds: Option<&Value>, what: &str, builtin: bool, problems: &mut Vec<String>) {
    let uid = ds.and_then(|d| d.get("uid")).and_then(Value::as_str);
    let kind = ds.and_then(|d| d.get("type")).and_then(Value::as_str);
    let ok = match (kind, uid) {
        (Some("prometheus"), Some("${datasource}")) => true,
        (Some("grafana"), Some(crate::grafana::GRAFANA_DATASOURCE_UID)) => builtin,
        _ => false,
    };
    if !ok {
        problems.push(format!(
            "{what} uses an unknown data source {} (expected {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}})",
            ds.map_or_else(|| "(none)".to_owned(), Value::to_string)
        ));
    }
}

/// Metrics: every metric read is in `catalog`; counters and histogram series are read
/// only through `rate`/`increase`, gauges never; label names exist on the family
/// and literal label values (`=`, `!=`, and `=~"a|b"` alternatives) are among the
/// values it exports.
pub fn metrics(dashboard: &Value, catalog: &Catalog) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries(dashboard) {
        let Ok(expr) = parse(dashboard, &q.expr) else {
            continue; // reported by `structure`
        };
        for s in selectors(&expr) {
            let Some(name) = selector_name(s.selector) else {
                if !s
                    .selector
                    .matchers
                    .matchers
                    .iter()
                    .any(|m| m.name == "__name__")
                {
                    problems.push(format!("{}: a selector without a metric name", what(&q)));
                }
                continue;
            };
            let Some((family_name, family, suffix)) = catalog.resolve(&name) else {
                problems.push(format!("{}: unknown metric `{name}`", what(&q)));
                continue;
            };
            let through_counter_fn = s.function.is_some_and(|f| COUNTER_FUNCTIONS.contains(&f));
            let cumulative = family.kind == "counter" || !suffix.is_empty();
            if cumulative && !through_counter_fn {
                problems.push(format!(
                    "{}: `{name}` ({}) is read without rate()/increase()",
                    what(&q),
                    family.kind
                ));
            }
            if !cumulative && through_counter_fn {
                problems.push(format!(
                    "{}: {}() of `{name}`, a {}",
                    what(&q),
                    s.function.unwrap_or_default(),
                    family.kind
                ));
            }
            for m in &s.selector.matchers.matchers {
                if m.name == "__name__" || (m.name == "le" && suffix == "_bucket") {
                    continue;
                }
                let Some(known) = family.labels.get(&m.name) else {
                    problems.push(format!(
                        "{}: `{family_name}` has no label `{}`",
                        what(&q),
                        m.name
                    ));
                    continue;
                };
                let Some(known) = known else { continue };
                if OPEN_LABELS.contains(&m.name.as_str()) {
                    continue;
                }
                let literal: Vec<&str> = match &m.op {
                    MatchOp::Equal | MatchOp::NotEqual => vec![m.value.as_str()],
                    MatchOp::Re(_) | MatchOp::NotRe(_) => {
                        if m.value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|')
                        {
                            m.value.split('|').collect()
                        } else {
                            Vec::new()
                        }
                    }
                };
                for value in literal {
                    if !known.contains(value) {
                        problems.push(format!(
                            "{}: `{family_name}` never has {}=\"{value}\" (it has {})",
                            what(&q),
                            m.name,
                            known.iter().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
    }
    problems
}
