//! Any bytes as a fetch request and as a fetch stream: typed errors, never
//! a panic; a request that parses encodes back to the same bytes; a stream
//! gives the same events fed whole as fed in pieces of any size (the first
//! byte chooses it), its answers in order, each ended once, never more
//! data than it was given.
#![no_main]

use intersync_protocol::fetch::{Event, FetchError, StreamParser, encode_request, parse_request};
use libfuzzer_sys::fuzz_target;

/// Events of `bytes` as a stream of `asked` answers, fed `piece` at a time.
fn events(bytes: &[u8], asked: usize, piece: usize) -> (Vec<String>, Result<(), FetchError>) {
    let mut parser = StreamParser::new(asked);
    let mut seen = Vec::new();
    let mut data = Vec::new();
    let mut fed = Ok(());
    for part in bytes.chunks(piece) {
        fed = parser.feed(part, &mut |event: Event<'_>| -> Result<(), FetchError> {
            match event {
                Event::Data(bytes) => data.extend_from_slice(bytes),
                other => {
                    if !data.is_empty() {
                        seen.push(format!("data {:?}", std::mem::take(&mut data)));
                    }
                    seen.push(format!("{other:?}"));
                }
            }
            Ok(())
        });
        if fed.is_err() {
            break;
        }
    }
    if !data.is_empty() {
        seen.push(format!("data {data:?}"));
    }
    (seen, fed.and_then(|()| parser.finish()))
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(wants) = parse_request(bytes) {
        let mut again = Vec::new();
        encode_request(&wants, &mut again);
        assert_eq!(again, bytes, "a request does not encode back to itself");
    }
    let [piece, asked, rest @ ..] = bytes else {
        return;
    };
    let asked = usize::from(*asked % 16);
    let (whole, whole_end) = events(rest, asked, rest.len().max(1));
    let (pieces, pieces_end) = events(rest, asked, 1 + usize::from(*piece));
    if whole_end.is_ok() {
        assert_eq!(whole, pieces, "the same stream parsed two ways");
        assert_eq!(pieces_end, Ok(()));
        let ends = whole.iter().filter(|e| e.starts_with("End")).count();
        assert_eq!(ends, asked, "every answer ended once");
    }
});
