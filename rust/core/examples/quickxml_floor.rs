//! The floor under the XML decoder: quick-xml reading every event of a file and doing
//! nothing with it. `cargo run --release -p mdmgate-core --example quickxml_floor -- FILE`.

use std::time::Instant;

use quick_xml::events::Event;
use quick_xml::reader::Reader;

fn main() {
    let path = std::env::args().nth(1).expect("usage: quickxml_floor FILE");
    let data = std::fs::read(&path).expect("readable file");
    let text = std::str::from_utf8(&data).expect("UTF-8");
    let rounds = (200_000_000 / data.len()).max(1);
    let started = Instant::now();
    let mut events = 0usize;
    for _ in 0..rounds {
        let mut reader = Reader::from_str(text);
        loop {
            match reader.read_event().expect("well-formed") {
                Event::Eof => break,
                _ => events += 1,
            }
        }
    }
    let per = started.elapsed() / u32::try_from(rounds).unwrap_or(u32::MAX);
    let mbps = data.len() as f64 / per.as_secs_f64() / 1e6;
    println!(
        "{path}: {} bytes, {per:?} per pass, {mbps:.0} MB/s ({} events per pass)",
        data.len(),
        events / rounds
    );
}
