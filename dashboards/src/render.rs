//! Drawing a dashboard's key panels from Prometheus `query_range` data into a PNG,
//! and checking that every panel query returns data.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

use crate::catalog::{Catalog, DEMO_CONTRACT};
use crate::prom::{Prometheus, QueryError, Series};
use crate::{live_value, panels, queries, substitute};

/// The panels drawn for each dashboard file, by title.
pub const KEY_PANELS: &[(&str, &[&str])] = &[
    (
        "palisade-overview.json",
        &[
            "Request rate",
            "Error ratio",
            "Calls by outcome",
            "Failure and slow-call rate vs threshold",
            "Retry amplification",
            "Timeouts and deadline rejections",
            "Rate limiter",
            "Concurrency limit vs in flight",
        ],
    ),
    (
        "order-demo.json",
        &[
            "Orders per second",
            "Order failure ratio",
            "Gateway request rate",
            "Gateway error ratio",
            "Gateway latency p50 / p99",
            "Outbound calls p99 by peer",
        ],
    ),
];

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Makes the bundled font (DejaVu Sans) the one charts use, so drawing needs no
/// system fonts.
pub fn register_font() -> Result<(), String> {
    plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
        .map_err(|_| "the bundled font does not load".to_owned())
}

/// One panel's data, ready to draw.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The panel title.
    pub title: String,
    /// The Grafana unit of its values.
    pub unit: String,
    /// Each series drawn.
    pub series: Vec<Line>,
}

/// One series of a chart.
#[derive(Debug, Clone)]
pub struct Line {
    /// Its legend.
    pub legend: String,
    /// The colour the panel gives it (a Grafana override), if any.
    pub colour: Option<(u8, u8, u8)>,
    /// `(unix seconds, value)` samples.
    pub points: Vec<(f64, f64)>,
}

/// The RGB of a Grafana colour name the dashboards use.
pub fn grafana_colour(name: &str) -> Option<(u8, u8, u8)> {
    Some(match name {
        "green" => (0x73, 0xbf, 0x69),
        "yellow" => (0xf2, 0xcc, 0x0c),
        "orange" => (0xff, 0x98, 0x30),
        "red" => (0xf2, 0x49, 0x5c),
        "dark-red" => (0xc4, 0x16, 0x2a),
        "purple" => (0xb8, 0x77, 0xd9),
        "blue" => (0x56, 0x94, 0xf2),
        "text" => (0x80, 0x80, 0x80),
        _ => return None,
    })
}

/// The fixed colour a panel's overrides give the series named `legend`.
fn override_colour(panel: &Value, legend: &str) -> Option<(u8, u8, u8)> {
    panel
        .pointer("/fieldConfig/overrides")?
        .as_array()?
        .iter()
        .filter(|o| o.pointer("/matcher/options").and_then(Value::as_str) == Some(legend))
        .flat_map(|o| o["properties"].as_array().into_iter().flatten())
        .find(|p| p["id"] == "color")
        .and_then(|p| p.pointer("/value/fixedColor"))
        .and_then(Value::as_str)
        .and_then(grafana_colour)
}

/// The query time range and the interval substituted for `$__rate_interval`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// Start, unix seconds.
    pub start: f64,
    /// End, unix seconds.
    pub end: f64,
    /// Seconds between points.
    pub step: f64,
    /// Prometheus's scrape interval, seconds.
    pub scrape_interval: f64,
}

impl Range {
    /// `$__rate_interval` as Grafana computes it: max(step + scrape interval, 4 × scrape interval).
    pub fn rate_interval(&self) -> String {
        let seconds = (self.step + self.scrape_interval).max(4.0 * self.scrape_interval);
        format!("{}ms", (seconds * 1000.0).round() as u64)
    }
}

/// The expression as Prometheus receives it for a live query over `range`.
pub fn live_expr(dashboard: &Value, expr: &str, range: &Range) -> Result<String, String> {
    let interval = range.rate_interval();
    substitute(expr, |name| live_value(dashboard, name, &interval))
}

/// Queries one panel's targets over `range`.
pub async fn fetch_panel(
    prometheus: &Prometheus,
    dashboard: &Value,
    panel: &Value,
    range: &Range,
) -> Result<Chart, QueryError> {
    let mut chart = Chart {
        title: panel["title"].as_str().unwrap_or_default().to_owned(),
        unit: panel
            .pointer("/fieldConfig/defaults/unit")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        series: Vec::new(),
    };
    for target in panel["targets"].as_array().into_iter().flatten() {
        let expr = target["expr"].as_str().unwrap_or_default();
        let expr = live_expr(dashboard, expr, range).map_err(QueryError)?;
        let legend = target["legendFormat"].as_str().unwrap_or_default();
        let result = prometheus
            .query_range(&expr, range.start, range.end, range.step)
            .await?;
        let downstreams: std::collections::BTreeSet<_> = result
            .iter()
            .filter_map(|s| s.labels.get("downstream"))
            .collect();
        for s in &result {
            let name = s.legend(legend);
            let colour = override_colour(panel, &name);
            // A panel of the repeated row shows one downstream in Grafana; drawn for
            // all of them at once, say which line is which.
            let name = match s.labels.get("downstream") {
                Some(d) if downstreams.len() > 1 && !legend.contains("{{downstream}}") => {
                    format!("{name} ({d})")
                }
                _ => name,
            };
            chart.series.push(Line {
                legend: name,
                colour,
                points: s.points.clone(),
            });
        }
    }
    Ok(chart)
}

/// The key panels of `file`'s dashboard, in the order of [`KEY_PANELS`].
pub fn key_panels<'a>(file: &str, dashboard: &'a Value) -> Vec<&'a Value> {
    let titles = KEY_PANELS
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, t)| *t)
        .unwrap_or_default();
    titles
        .iter()
        .filter_map(|title| {
            panels(dashboard)
                .into_iter()
                .find(|p| p["title"].as_str() == Some(title))
        })
        .collect()
}

/// What `check` found for one query.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Panel title or annotation name.
    pub title: String,
    /// The expression sent.
    pub expr: String,
    /// `None` when it returned data; otherwise what was wrong.
    pub problem: Option<String>,
}

/// What [`check`] found: a finding per query it sent, and the queries it left out.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// One per query sent.
    pub findings: Vec<Finding>,
    /// Queries that read a metric of the demo's own, left out (`skip_demo`).
    pub demo_skipped: usize,
    /// Queries that read no metric at all (a dashboard variable drawn as a line):
    /// they always return data, so they prove nothing.
    pub constants: usize,
}

/// A trailing fallback that makes an empty result a zero line: left off when
/// checking, so that the series under it must exist.
const OR_ZERO: &str = " or vector(0)";

/// Runs every query of `dashboard` over `range` and reports, per query, whether it
/// returned a series with at least one finite value. A trailing `or vector(0)` is
/// left off, and queries that read no metric are counted, not sent. Queries that read
/// a metric of [`DEMO_CONTRACT`] are left out when `skip_demo` is set (the target is
/// not the order demo, so it has none of the demo's own series).
pub async fn check(
    prometheus: &Prometheus,
    dashboard: &Value,
    range: &Range,
    skip_demo: bool,
) -> Checked {
    let demo = Catalog::from_contract(DEMO_CONTRACT).unwrap_or_default();
    let mut checked = Checked::default();
    for q in queries(dashboard) {
        let parsed = crate::check::parse(dashboard, &q.expr);
        let names = parsed
            .as_ref()
            .map(crate::check::metric_names)
            .unwrap_or_default();
        if parsed.is_ok() && names.is_empty() {
            checked.constants += 1;
            continue;
        }
        if skip_demo && names.iter().any(|n| demo.resolve(n).is_some()) {
            checked.demo_skipped += 1;
            continue;
        }
        let sent = q.expr.strip_suffix(OR_ZERO).unwrap_or(&q.expr);
        let expr = match live_expr(dashboard, sent, range) {
            Ok(expr) => expr,
            Err(e) => {
                checked.findings.push(Finding {
                    title: q.title,
                    expr: q.expr,
                    problem: Some(e),
                });
                continue;
            }
        };
        let problem = match prometheus
            .query_range(&expr, range.start, range.end, range.step)
            .await
        {
            Err(e) => Some(e.to_string()),
            Ok(series) if series.is_empty() => Some("no series".to_owned()),
            Ok(series) if !series.iter().any(has_finite) => {
                Some(format!("{} series, no finite value", series.len()))
            }
            Ok(_) => None,
        };
        checked.findings.push(Finding {
            title: q.title,
            expr,
            problem,
        });
    }
    checked
}

fn has_finite(s: &Series) -> bool {
    s.points.iter().any(|(_, v)| v.is_finite())
}

/// Formats `v` in a Grafana unit, briefly.
pub fn format_value(unit: &str, v: f64) -> String {
    let num = |v: f64| {
        let a = v.abs();
        if a == 0.0 {
            "0".to_owned()
        } else if a >= 100.0 {
            format!("{v:.0}")
        } else if a >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    match unit {
        "percentunit" => format!("{}%", num(v * 100.0)),
        "s" if v.abs() < 1.0 && v != 0.0 => format!("{} ms", num(v * 1000.0)),
        "s" => format!("{} s", num(v)),
        "reqps" => format!("{}/s", num(v)),
        u => match u.strip_prefix("suffix:") {
            Some(suffix) => format!("{}{suffix}", num(v)),
            None => num(v),
        },
    }
}

fn clock(t: f64) -> String {
    let s = (t.rem_euclid(86_400.0)) as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Draws `charts` two to a row into a PNG at `path`, titled `title`, over `range`.
pub fn draw_png(path: &Path, title: &str, charts: &[Chart], range: &Range) -> Result<(), String> {
    let columns = 2;
    let rows = charts.len().div_ceil(columns).max(1);
    let (width, row_height) = (1600u32, 380u32);
    let height = 60 + row_height * rows as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let (header, body) = root.split_vertically(60);
    header
        .titled(
            &format!(
                "{title} — {} to {} UTC",
                clock(range.start),
                clock(range.end)
            ),
            (FONT, 28).into_font(),
        )
        .map_err(err)?;
    let areas = body.split_evenly((rows, columns));
    for (area, chart) in areas.iter().zip(charts) {
        draw_chart(area, chart, range).map_err(|e| format!("drawing \"{}\": {e}", chart.title))?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
    range: &Range,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let finite = chart
        .series
        .iter()
        .flat_map(|l| l.points.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let hi = if hi <= lo {
        lo + 1.0
    } else {
        hi + (hi - lo) * 0.05
    };
    let mut ctx = ChartBuilder::on(area)
        .margin(12)
        .caption(&chart.title, (FONT, 20).into_font())
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(range.start..range.end, lo..hi)
        .map_err(|e| e.to_string())?;
    let unit = chart.unit.clone();
    ctx.configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|t| clock(*t))
        .y_label_formatter(&|v| format_value(&unit, *v))
        .label_style((FONT, 13).into_font())
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    if chart.series.is_empty() {
        area.draw(&Text::new(
            "no data",
            (
                area.dim_in_pixel().0 as i32 / 2 - 30,
                area.dim_in_pixel().1 as i32 / 2,
            ),
            (FONT, 18).into_font().color(&RED),
        ))
        .map_err(|e| e.to_string())?;
    }
    for (i, line) in chart.series.iter().enumerate() {
        let (legend, points) = (&line.legend, &line.points);
        let colour = match line.colour {
            // Two lines of one colour (one per downstream): the second a shade darker.
            Some((r, g, b)) if chart.series[..i].iter().any(|l| l.colour == line.colour) => {
                RGBColor(r / 2, g / 2, b / 2).to_rgba()
            }
            Some((r, g, b)) => RGBColor(r, g, b).to_rgba(),
            None => Palette99::pick(i).to_rgba(),
        };
        // Break the line at NaN (Prometheus's "no value" for 0/0).
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(t, v) in points {
            if v.is_finite() {
                segments.last_mut().into_iter().for_each(|s| s.push((t, v)));
            } else if segments.last().is_some_and(|s| !s.is_empty()) {
                segments.push(Vec::new());
            }
        }
        let mut first = true;
        for segment in segments.into_iter().filter(|s| !s.is_empty()) {
            let drawn = ctx
                .draw_series(LineSeries::new(segment, colour.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if first {
                drawn.label(legend.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
                first = false;
            }
        }
    }
    if !chart.series.is_empty() {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13).into_font())
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_in_their_units() {
        assert_eq!(format_value("percentunit", 0.125), "12.5%");
        assert_eq!(format_value("s", 0.0042), "4.20 ms");
        assert_eq!(format_value("s", 2.5), "2.50 s");
        assert_eq!(format_value("reqps", 120.0), "120/s");
        assert_eq!(format_value("suffix:×", 1.5), "1.50×");
        assert_eq!(clock(3_600.0 * 25.0 + 61.0), "01:01:01");
    }

    #[test]
    fn rate_interval_follows_grafana() {
        let r = Range {
            start: 0.0,
            end: 600.0,
            step: 3.0,
            scrape_interval: 1.0,
        };
        assert_eq!(r.rate_interval(), "4000ms");
        let r = Range { step: 10.0, ..r };
        assert_eq!(r.rate_interval(), "11000ms");
    }

    #[test]
    fn a_png_is_drawn_with_the_bundled_font() {
        register_font().unwrap();
        let range = Range {
            start: 1000.0,
            end: 1060.0,
            step: 1.0,
            scrape_interval: 1.0,
        };
        let charts = vec![
            Chart {
                title: "Error ratio".into(),
                unit: "percentunit".into(),
                series: vec![Line {
                    legend: "inventory".into(),
                    colour: grafana_colour("red"),
                    points: (0..60)
                        .map(|i| {
                            (
                                1000.0 + f64::from(i),
                                if i == 30 {
                                    f64::NAN
                                } else {
                                    f64::from(i) / 100.0
                                },
                            )
                        })
                        .collect(),
                }],
            },
            Chart {
                title: "Empty".into(),
                unit: "s".into(),
                series: vec![],
            },
        ];
        let dir = std::env::temp_dir().join(format!("palisade-dashboards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.png");
        draw_png(&path, "Test", &charts, &range).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Width and height from the IHDR chunk: 1600 × (60 + 380).
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1600);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 440);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
