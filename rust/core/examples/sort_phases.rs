//! Times each phase of sorting a column of versions, with cargo alone:
//!
//!     cargo run --release -p mdmgate-core --example sort_phases -- versions.txt [platform]
//!
//! `versions.txt` holds one version per line (`python benches/bench_versions.py --dump`
//! writes the benchmark's data sets).

use std::time::Instant;

use mdmgate_core::versions::{argsort_rows, Interned, Platform};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: sort_phases FILE [PLATFORM]")?;
    let platform_name = args.next().unwrap_or_else(|| "ios".to_owned());
    let platform = Platform::from_name(&platform_name).ok_or("unknown platform")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let rows: Vec<&str> = text.lines().collect();
    for run in 1..=3 {
        let start = Instant::now();
        let mut column = Interned::default();
        for row in &rows {
            column.push(row);
        }
        let interned = start.elapsed();
        let keys = column
            .keys(platform)
            .map_err(|e| e.error.describe(platform, rows[e.index]))?;
        let keyed = start.elapsed();
        let ranks = keys.ranks();
        let ranked = start.elapsed();
        let order = argsort_rows(&ranks, column.rows(), false);
        let total = start.elapsed();
        println!(
            "run {run}: {} rows, {} distinct: intern {:?}, keys {:?}, rank {:?}, order {:?}, total {:?}",
            order.len(),
            column.values().len(),
            interned,
            keyed - interned,
            ranked - keyed,
            total - ranked,
            total
        );
    }
    Ok(())
}
