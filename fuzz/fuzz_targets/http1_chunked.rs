//! Arbitrary bytes as a chunked request body (the first byte picks the line limits): an
//! answer, never a panic. Fed whole or in pieces, the decoder decodes the same data and
//! leaves the same bytes after the body, or refuses both ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdmgate_core::http1::ChunkedDecoder;

/// The data and the bytes after the body once done (`None` while incomplete), fed in pieces
/// of `step` bytes the way the server feeds what it reads; `Err` when refused.
fn decode(input: &[u8], step: usize, limit: usize) -> Result<(Vec<u8>, Option<Vec<u8>>), ()> {
    let mut decoder = ChunkedDecoder::new(limit, limit);
    let mut buffer = Vec::new();
    let mut data = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buffer.extend_from_slice(piece);
        if decoder.is_done() {
            continue;
        }
        let progress = decoder
            .decode(&buffer, |d| data.extend_from_slice(d))
            .map_err(|_| ())?;
        assert!(progress.consumed <= buffer.len());
        buffer.drain(..progress.consumed);
    }
    assert_eq!(decoder.decoded(), data.len() as u64);
    Ok((data, decoder.is_done().then_some(buffer)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, input)) = data.split_first() else {
        return;
    };
    let limit = 3 + usize::from(size);
    let whole = decode(input, input.len(), limit);
    for step in [1, 7] {
        let pieces = decode(input, step, limit);
        // Where the bytes are split never matters: not to the data, nor to where the body
        // ends, nor to whether (and when) it is refused.
        assert_eq!(whole, pieces, "in pieces of {step}");
    }
});
