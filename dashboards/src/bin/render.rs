//! Draws each dashboard's key panels from a live Prometheus into `dashboards/png/`,
//! or, with `--check`, asserts that every panel query returns data.
//!
//! ```text
//! render [--prometheus http://127.0.0.1:9090] [--last 15m | --start UNIX --end UNIX]
//!        [--scrape-interval 15s] [--out DIR] [--check [--skip-demo]]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use palisade_dashboards::prom::Prometheus;
use palisade_dashboards::render::{self, Range};

const USAGE: &str = "usage: render [--prometheus URL] [--last DURATION | --start UNIX --end UNIX] [--scrape-interval DURATION] [--out DIR] [--check [--skip-demo]]";

#[derive(Debug)]
struct Args {
    prometheus: String,
    last: Option<f64>,
    start: Option<f64>,
    end: Option<f64>,
    scrape_interval: f64,
    out: PathBuf,
    check: bool,
    skip_demo: bool,
}

fn seconds(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 10m or 1h"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Ok(n * scale)
}

fn parse_args() -> Result<Args, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = Args {
        prometheus: "http://127.0.0.1:9090".to_owned(),
        last: None,
        start: None,
        end: None,
        scrape_interval: 15.0,
        out: dir.join("png"),
        check: false,
        skip_demo: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--prometheus" => args.prometheus = value()?,
            "--last" => args.last = Some(seconds(&value()?)?),
            "--start" => {
                args.start = Some(value()?.parse().map_err(|_| "--start takes unix seconds")?)
            }
            "--end" => args.end = Some(value()?.parse().map_err(|_| "--end takes unix seconds")?),
            "--scrape-interval" => args.scrape_interval = seconds(&value()?)?,
            "--out" => args.out = PathBuf::from(value()?),
            "--check" => args.check = true,
            "--skip-demo" => args.skip_demo = true,
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.scrape_interval <= 0.0 {
        return Err("--scrape-interval must be more than zero".to_owned());
    }
    Ok(args)
}

/// Wall-clock now, for the default query range only: Prometheus's data is in wall time.
#[allow(clippy::disallowed_methods)]
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn range(args: &Args) -> Result<Range, String> {
    let (start, end) = match (args.start, args.end) {
        (Some(s), Some(e)) => (s, e),
        (None, None) => {
            let end = now();
            (end - args.last.unwrap_or(900.0), end)
        }
        _ => return Err("give both --start and --end, or neither".to_owned()),
    };
    if end <= start {
        return Err(format!("the range ends ({end}) before it starts ({start})"));
    }
    let step = ((end - start) / 240.0).max(1.0).round();
    Ok(Range {
        start,
        end,
        step,
        scrape_interval: args.scrape_interval,
    })
}

fn read_dashboard(file: &str) -> Result<serde_json::Value, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn run(args: Args) -> Result<bool, String> {
    let range = range(&args)?;
    let prometheus = Prometheus::new(&args.prometheus);
    let mut ok = true;
    if args.check {
        for (file, _) in render::KEY_PANELS {
            let dashboard = read_dashboard(file)?;
            let checked = render::check(&prometheus, &dashboard, &range, args.skip_demo).await;
            let failed: Vec<_> = checked
                .findings
                .iter()
                .filter(|f| f.problem.is_some())
                .collect();
            println!(
                "{file}: {} queries returned data, {} did not, {} skipped (the demo's own metrics), {} constant lines not sent",
                checked.findings.len() - failed.len(),
                failed.len(),
                checked.demo_skipped,
                checked.constants
            );
            for f in failed {
                ok = false;
                println!(
                    "  FAIL \"{}\": {}\n       {}",
                    f.title,
                    f.problem.as_deref().unwrap_or_default(),
                    f.expr.replace('\n', " ")
                );
            }
        }
        return Ok(ok);
    }
    render::register_font()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for (file, _) in render::KEY_PANELS {
        let dashboard = read_dashboard(file)?;
        let mut charts = Vec::new();
        for panel in render::key_panels(file, &dashboard) {
            charts.push(
                render::fetch_panel(&prometheus, &dashboard, panel, &range)
                    .await
                    .map_err(|e| format!("{file} \"{}\": {e}", panel["title"]))?,
            );
        }
        let png = args.out.join(file.replace(".json", ".png"));
        let title = dashboard["title"].as_str().unwrap_or(file);
        render::draw_png(&png, title, &charts, &range)?;
        println!("wrote {}", png.display());
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("render: {e}");
            ExitCode::FAILURE
        }
    }
}
