//! PNG charts of each scenario: goodput and p99 latency over time, both modes on
//! one chart, the fault window shaded.
//!
//! Text needs a TrueType font. plotters is built with its `ab_glyph` renderer, so
//! no system font library is needed; a font file is read from `ORDER_DEMO_FONT`
//! or a few usual places. Without one the charts are drawn without text (the
//! report says what the axes are).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use palisade::BoxError;
use plotters::prelude::*;

use super::report::series;
use super::{Run, Scenario};
use crate::stack::Mode;

/// (bucket start s, goodput /s, p99 ms).
type Point = (f64, f64, f64);

const BUCKET: Duration = Duration::from_millis(250);
const FONT_PLACES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Whether a font was found and registered (done once).
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let places = std::env::var("ORDER_DEMO_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PLACES.iter().map(|s| (*s).to_owned()));
        for place in places {
            if let Ok(bytes) = std::fs::read(&place) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Palisade => RGBColor(31, 119, 180),
        Mode::Plain => RGBColor(214, 39, 40),
    }
}

/// Writes `<scenario>.png` into `folder` for each scenario in `runs`.
pub fn write_all(folder: &Path, runs: &[Run]) -> Result<(), BoxError> {
    for scenario in Scenario::ALL {
        let of: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        if !of.is_empty() {
            write(
                &folder.join(format!("{}.png", scenario.name())),
                scenario,
                &of,
            )?;
        }
    }
    Ok(())
}

/// Draws one scenario's chart into `path`.
pub fn write(path: &Path, scenario: Scenario, runs: &[&Run]) -> Result<(), BoxError> {
    let text = font_available();
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = if text {
        root.titled(
            &format!("{} — {}", scenario.name(), scenario.description()),
            ("sans-serif", 20),
        )
        .map_err(|e| e.to_string())?
    } else {
        root
    };
    let (top, bottom) = root.split_vertically(330);
    let length = runs
        .iter()
        .map(|r| r.length)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let fault = runs.first().map_or((0.0, 0.0), |r| {
        (
            r.fault_window.0.as_secs_f64(),
            r.fault_window.1.as_secs_f64(),
        )
    });
    let data: Vec<(Mode, Vec<Point>)> = runs
        .iter()
        .map(|r| (r.mode, series(&r.samples, r.length, BUCKET)))
        .collect();
    let max_goodput = data
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let max_latency = data
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.2))
        .fold(1.0f64, f64::max)
        * 1.1;
    for (area, title, max, pick) in [
        (
            &top,
            "goodput (successes/s, by intended send time)",
            max_goodput,
            1usize,
        ),
        (&bottom, "p99 latency (ms)", max_latency, 2usize),
    ] {
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if text {
            builder
                .caption(title, ("sans-serif", 16))
                .x_label_area_size(30)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..length, 0.0..max)
            .map_err(|e| e.to_string())?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0));
        if text {
            mesh.x_desc("seconds").label_style(("sans-serif", 12));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(fault.0, 0.0), (fault.1, max)],
                RGBColor(200, 200, 200).mix(0.4).filled(),
            )))
            .map_err(|e| e.to_string())?;
        for (mode, points) in &data {
            let c = color(*mode);
            let series = chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| {
                        (
                            p.0 + BUCKET.as_secs_f64() / 2.0,
                            if pick == 1 { p.1 } else { p.2 },
                        )
                    }),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if text {
                series.label(mode.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
