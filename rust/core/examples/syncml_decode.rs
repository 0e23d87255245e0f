//! Decodes a SyncML file repeatedly and prints the time per decode, for profiling:
//! `cargo run --release -p mdmgate-core --example syncml_decode -- FILE [ROUNDS]`.

use std::time::Instant;

use mdmgate_core::syncml::{decode, Limits};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: syncml_decode FILE [ROUNDS]");
    let rounds: u32 = args
        .next()
        .map_or(1000, |r| r.parse().expect("ROUNDS is a number"));
    let data = std::fs::read(&path).expect("readable file");
    let limits = Limits::default();
    let started = Instant::now();
    let mut commands = 0;
    for _ in 0..rounds {
        commands += decode(&data, &limits).expect("valid message").body.len();
    }
    let per = started.elapsed() / rounds;
    let mbps = data.len() as f64 / per.as_secs_f64() / 1e6;
    println!(
        "{path}: {} bytes, {per:?} per decode, {mbps:.0} MB/s ({commands} commands)",
        data.len()
    );
}
