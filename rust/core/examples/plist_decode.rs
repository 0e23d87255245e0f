//! Decodes a plist file repeatedly and prints the time per decode, for profiling:
//! `cargo run --release -p mdmgate-core --example plist_decode -- FILE [ROUNDS]`.

use std::time::Instant;

use mdmgate_core::plist::{decode, Limits};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: plist_decode FILE [ROUNDS]");
    let rounds: u32 = args
        .next()
        .map_or(1000, |r| r.parse().expect("ROUNDS is a number"));
    let data = std::fs::read(&path).expect("readable file");
    let limits = Limits::default();
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(decode(&data, &limits).expect("valid plist"));
    }
    let per = started.elapsed() / rounds;
    println!("{path}: {} bytes, {per:?} per decode", data.len());
}
