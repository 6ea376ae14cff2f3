//! Writes the dashboards' JSON files into `dashboards/`:
//! `cargo run -p palisade-dashboards --bin generate`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, dashboard) in palisade_dashboards::dashboards() {
        let path = dir.join(file);
        std::fs::write(&path, palisade_dashboards::to_file_text(&dashboard))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
