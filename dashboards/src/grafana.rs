//! Small builders for Grafana dashboard JSON (schema 39, Grafana 10.4 and later).
//!
//! Every panel that queries gets the Prometheus data source from the `${datasource}`
//! variable and a unit; the layout is a simple left-to-right grid.

use serde_json::{Map, Value, json};

/// The data source reference every querying panel and target uses.
pub fn datasource() -> Value {
    json!({ "type": "prometheus", "uid": "${datasource}" })
}

/// Grafana's own data source, used only by the built-in annotation.
pub const GRAFANA_DATASOURCE_UID: &str = "-- Grafana --";

/// The dashboard schema version written.
pub const SCHEMA_VERSION: u64 = 39;

/// Hystrix-like colours for an error ratio: green below 1 %, yellow from 1 %, orange
/// from 10 %, red from 50 % (the common default for opening a breaker).
pub fn error_ratio_steps() -> Value {
    json!([
        { "color": "green", "value": null },
        { "color": "yellow", "value": 0.01 },
        { "color": "orange", "value": 0.1 },
        { "color": "red", "value": 0.5 }
    ])
}

/// One query of a panel.
#[derive(Debug, Clone)]
pub struct Target {
    expr: String,
    legend: String,
    format: Option<&'static str>,
}

/// The kinds of panel the dashboards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A time series graph.
    TimeSeries,
    /// A single big number per series.
    Stat,
    /// Bands of state over time.
    StateTimeline,
    /// Histogram buckets over time.
    Heatmap,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::TimeSeries => "timeseries",
            Kind::Stat => "stat",
            Kind::StateTimeline => "state-timeline",
            Kind::Heatmap => "heatmap",
        }
    }
}

/// A panel under construction.
#[derive(Debug, Clone)]
pub struct Panel {
    kind: Kind,
    title: String,
    description: String,
    unit: String,
    targets: Vec<Target>,
    steps: Option<Value>,
    threshold_lines: bool,
    min: Option<f64>,
    max: Option<f64>,
    overrides: Vec<Value>,
    bars: bool,
    stacked: bool,
    repeat: Option<&'static str>,
    width: u32,
    height: u32,
}

impl Panel {
    fn new(kind: Kind, title: &str, unit: &str) -> Self {
        Self {
            kind,
            title: title.to_owned(),
            description: String::new(),
            unit: unit.to_owned(),
            targets: Vec::new(),
            steps: None,
            threshold_lines: false,
            min: Some(0.0),
            max: None,
            overrides: Vec::new(),
            bars: false,
            stacked: false,
            repeat: None,
            width: 8,
            height: 8,
        }
    }

    /// A time series panel in `unit` (a Grafana unit id such as `reqps`, `s`, `percentunit`).
    pub fn timeseries(title: &str, unit: &str) -> Self {
        Self::new(Kind::TimeSeries, title, unit)
    }

    /// A stat panel.
    pub fn stat(title: &str, unit: &str) -> Self {
        Self::new(Kind::Stat, title, unit)
    }

    /// A state timeline panel.
    pub fn state_timeline(title: &str, unit: &str) -> Self {
        Self::new(Kind::StateTimeline, title, unit)
    }

    /// A heatmap of pre-bucketed Prometheus histogram data.
    pub fn heatmap(title: &str, unit: &str) -> Self {
        Self::new(Kind::Heatmap, title, unit)
    }

    /// What the panel shows, in a sentence or two (shown on hover in Grafana).
    pub fn describe(mut self, text: &str) -> Self {
        self.description = text.to_owned();
        self
    }

    /// Adds a query with its legend format.
    pub fn query(mut self, expr: &str, legend: &str) -> Self {
        self.targets.push(Target {
            expr: expr.to_owned(),
            legend: legend.to_owned(),
            format: None,
        });
        self
    }

    /// Adds a query whose result is histogram buckets (for a heatmap).
    pub fn heatmap_query(mut self, expr: &str) -> Self {
        self.targets.push(Target {
            expr: expr.to_owned(),
            legend: "{{le}}".to_owned(),
            format: Some("heatmap"),
        });
        self
    }

    /// Colour steps (`[{color, value}]`); drawn as lines and areas on a time series.
    pub fn thresholds(mut self, steps: Value) -> Self {
        self.steps = Some(steps);
        self.threshold_lines = true;
        self
    }

    /// The axis maximum.
    pub fn max(mut self, max: f64) -> Self {
        self.max = Some(max);
        self
    }

    /// No axis minimum (for series that can be negative).
    pub fn no_min(mut self) -> Self {
        self.min = None;
        self
    }

    /// Draws the series as bars.
    pub fn bars(mut self) -> Self {
        self.bars = true;
        self
    }

    /// Stacks the series.
    pub fn stacked(mut self) -> Self {
        self.stacked = true;
        self
    }

    /// Gives the series named `name` a fixed colour (and a dashed line when `dashed`).
    pub fn colour(mut self, name: &str, colour: &str, dashed: bool) -> Self {
        let mut properties =
            vec![json!({ "id": "color", "value": { "mode": "fixed", "fixedColor": colour } })];
        if dashed {
            properties.push(
                json!({ "id": "custom.lineStyle", "value": { "fill": "dash", "dash": [10, 10] } }),
            );
        }
        self.overrides.push(json!({
            "matcher": { "id": "byName", "options": name },
            "properties": properties
        }));
        self
    }

    /// Colours the band of series `name` in a state timeline when its value is at least 1.
    pub fn state_colour(mut self, name: &str, colour: &str) -> Self {
        self.overrides.push(json!({
            "matcher": { "id": "byName", "options": name },
            "properties": [{
                "id": "thresholds",
                "value": { "mode": "absolute", "steps": [
                    { "color": "transparent", "value": null },
                    { "color": colour, "value": 1 }
                ] }
            }]
        }));
        self
    }

    /// Repeats the panel for each value of a variable.
    pub fn repeat(mut self, variable: &'static str) -> Self {
        self.repeat = Some(variable);
        self
    }

    /// Grid size (width of 24, height in rows of 30 px).
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// The panel's title.
    pub fn title(&self) -> &str {
        &self.title
    }

    fn to_json(&self, id: u32, x: u32, y: u32) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut target = json!({
                    "datasource": datasource(),
                    "editorMode": "code",
                    "expr": t.expr,
                    "legendFormat": t.legend,
                    "range": true,
                    "refId": ref_id(i),
                });
                if let Some(format) = t.format {
                    target["format"] = json!(format);
                }
                target
            })
            .collect();
        let steps = self
            .steps
            .clone()
            .unwrap_or_else(|| json!([{ "color": "green", "value": null }]));
        let mut defaults = Map::new();
        defaults.insert("unit".into(), json!(self.unit));
        defaults.insert(
            "thresholds".into(),
            json!({ "mode": "absolute", "steps": steps }),
        );
        if let Some(min) = self.min {
            defaults.insert("min".into(), json!(min));
        }
        if let Some(max) = self.max {
            defaults.insert("max".into(), json!(max));
        }
        let options = match self.kind {
            Kind::TimeSeries => {
                defaults.insert("color".into(), json!({ "mode": "palette-classic" }));
                defaults.insert(
                    "custom".into(),
                    json!({
                        "drawStyle": if self.bars { "bars" } else { "line" },
                        "lineWidth": 1,
                        "fillOpacity": if self.bars || self.stacked { 60 } else { 10 },
                        "showPoints": "never",
                        "spanNulls": false,
                        "stacking": { "mode": if self.stacked { "normal" } else { "none" }, "group": "A" },
                        "thresholdsStyle": { "mode": if self.threshold_lines { "line+area" } else { "off" } }
                    }),
                );
                json!({
                    "legend": { "displayMode": "list", "placement": "bottom", "showLegend": true },
                    "tooltip": { "mode": "multi", "sort": "desc" }
                })
            }
            Kind::Stat => {
                defaults.insert("color".into(), json!({ "mode": "thresholds" }));
                json!({
                    "colorMode": "background",
                    "graphMode": "area",
                    "justifyMode": "auto",
                    "orientation": "auto",
                    "textMode": "value_and_name",
                    "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false }
                })
            }
            Kind::StateTimeline => {
                defaults.insert("color".into(), json!({ "mode": "thresholds" }));
                defaults.insert(
                    "custom".into(),
                    json!({ "fillOpacity": 80, "lineWidth": 0 }),
                );
                defaults.insert(
                    "mappings".into(),
                    json!([{ "type": "value", "options": { "0": { "index": 0, "text": " " } } }]),
                );
                json!({
                    "mergeValues": true,
                    "showValue": "never",
                    "alignValue": "left",
                    "rowHeight": 0.9,
                    "legend": { "displayMode": "list", "placement": "bottom", "showLegend": false },
                    "tooltip": { "mode": "single", "sort": "none" }
                })
            }
            Kind::Heatmap => {
                defaults.insert(
                    "custom".into(),
                    json!({ "scaleDistribution": { "type": "linear" } }),
                );
                json!({
                    "calculate": false,
                    "cellGap": 1,
                    "color": { "mode": "scheme", "scheme": "Oranges", "fill": "dark-orange", "scale": "exponential", "exponent": 0.5, "steps": 64, "reverse": false },
                    "rowsFrame": { "layout": "auto" },
                    "yAxis": { "axisPlacement": "left", "unit": self.unit },
                    "tooltip": { "mode": "single", "yHistogram": false },
                    "legend": { "show": true }
                })
            }
        };
        let mut panel = json!({
            "id": id,
            "type": self.kind.as_str(),
            "title": self.title,
            "description": self.description,
            "datasource": datasource(),
            "gridPos": { "h": self.height, "w": self.width, "x": x, "y": y },
            "fieldConfig": { "defaults": Value::Object(defaults), "overrides": self.overrides },
            "options": options,
            "targets": targets,
        });
        if let Some(variable) = self.repeat {
            panel["repeat"] = json!(variable);
            panel["repeatDirection"] = json!("h");
            panel["maxPerRow"] = json!(4);
        }
        panel
    }
}

fn ref_id(i: usize) -> String {
    char::from(b'A' + u8::try_from(i % 26).unwrap_or(0)).to_string()
}

/// Lays panels out left to right on Grafana's 24-column grid, numbering them.
#[derive(Debug, Default)]
pub struct Layout {
    panels: Vec<Value>,
    next_id: u32,
    x: u32,
    y: u32,
    row_height: u32,
}

impl Layout {
    /// An empty layout.
    pub fn new() -> Self {
        Self::default()
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn new_line(&mut self) {
        if self.x > 0 {
            self.y += self.row_height;
            self.x = 0;
            self.row_height = 0;
        }
    }

    /// Starts a row titled `title`, repeated for each value of `repeat` if given.
    pub fn row(&mut self, title: &str, repeat: Option<&str>) {
        self.new_line();
        let id = self.id();
        let mut row = json!({
            "id": id,
            "type": "row",
            "title": title,
            "collapsed": false,
            "gridPos": { "h": 1, "w": 24, "x": 0, "y": self.y },
            "panels": [],
        });
        if let Some(variable) = repeat {
            row["repeat"] = json!(variable);
        }
        self.panels.push(row);
        self.y += 1;
    }

    /// Places a panel after the previous one, wrapping at the grid's width.
    pub fn add(&mut self, panel: Panel) {
        if self.x + panel.width > 24 {
            self.new_line();
        }
        let id = self.id();
        self.panels.push(panel.to_json(id, self.x, self.y));
        self.x += panel.width;
        self.row_height = self.row_height.max(panel.height);
    }

    /// The panels placed so far.
    pub fn into_panels(self) -> Vec<Value> {
        self.panels
    }
}

/// The `${datasource}` variable: any Prometheus data source.
pub fn datasource_variable() -> Value {
    json!({
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": false,
        "multi": false,
        "refresh": 1,
        "regex": "",
        "options": []
    })
}

/// A multi-value variable filled from `label_values(<selector>, <label>)`, whose
/// "All" value is the regex `.+` (so queries use `label=~"$name"`).
pub fn label_values_variable(name: &str, label: &str, selector: &str, label_text: &str) -> Value {
    let query = format!("label_values({selector}, {label})");
    json!({
        "name": name,
        "label": label_text,
        "type": "query",
        "datasource": datasource(),
        "definition": query,
        "query": { "qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery" },
        "current": {},
        "hide": 0,
        "includeAll": true,
        "allValue": ".+",
        "multi": true,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "options": []
    })
}

/// A custom variable holding a number the user picks (such as a configured threshold).
pub fn number_variable(name: &str, label_text: &str, values: &[&str], description: &str) -> Value {
    let options: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| json!({ "selected": i == 0, "text": v, "value": v }))
        .collect();
    json!({
        "name": name,
        "label": label_text,
        "description": description,
        "type": "custom",
        "query": values.join(","),
        "current": { "selected": true, "text": values[0], "value": values[0] },
        "hide": 0,
        "includeAll": false,
        "multi": false,
        "options": options
    })
}

/// The built-in annotation every Grafana dashboard carries.
pub fn builtin_annotation() -> Value {
    json!({
        "builtIn": 1,
        "datasource": { "type": "grafana", "uid": GRAFANA_DATASOURCE_UID },
        "enable": true,
        "hide": true,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard"
    })
}

/// An annotation drawn wherever `expr` returns a sample, titled from its labels.
pub fn query_annotation(name: &str, expr: &str, title: &str, colour: &str) -> Value {
    json!({
        "name": name,
        "datasource": datasource(),
        "enable": true,
        "hide": false,
        "iconColor": colour,
        "expr": expr,
        "step": "10s",
        "titleFormat": title,
        "tagKeys": "",
        "textFormat": "",
        "useValueForTime": false
    })
}

/// A whole dashboard.
pub fn dashboard(
    uid: &str,
    title: &str,
    description: &str,
    variables: Vec<Value>,
    annotations: Vec<Value>,
    panels: Vec<Value>,
) -> Value {
    let mut list = vec![builtin_annotation()];
    list.extend(annotations);
    json!({
        "__requires": [
            { "type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0" },
            { "type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0" },
            { "type": "panel", "id": "timeseries", "name": "Time series", "version": "" },
            { "type": "panel", "id": "stat", "name": "Stat", "version": "" },
            { "type": "panel", "id": "state-timeline", "name": "State timeline", "version": "" },
            { "type": "panel", "id": "heatmap", "name": "Heatmap", "version": "" }
        ],
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["palisade"],
        "editable": true,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [],
        "liveNow": false,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "time": { "from": "now-30m", "to": "now" },
        "timepicker": {},
        "timezone": "browser",
        "version": 1,
        "weekStart": "",
        "annotations": { "list": list },
        "templating": { "list": variables },
        "panels": panels
    })
}
