//! Any bytes as a push stream: typed errors, never a panic; the bytes a
//! reader hands on never exceed the stream's, whatever size it reads in
//! (the first byte chooses it); a stream that reads whole writes back to
//! the same bytes.
#![no_main]

use intersync_protocol::push::{PushReader, PushWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let [piece, rest @ ..] = bytes else {
        return;
    };
    let Ok(mut reader) = PushReader::new(rest) else {
        return;
    };
    let mut buf = vec![0u8; 1 + usize::from(*piece)];
    let mut files = Vec::new();
    let mut total = 0usize;
    let whole = loop {
        match reader.next_entry() {
            Ok(Some(entry)) => {
                let mut data = Vec::new();
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                        Err(_) => return,
                    }
                }
                total += data.len();
                assert!(total <= rest.len(), "more data than bytes");
                files.push((entry, data));
            }
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    if whole {
        let mut w = PushWriter::new(Vec::new()).unwrap();
        for (entry, data) in &files {
            w.entry(entry).unwrap();
            w.data(data).unwrap();
        }
        let again = w.finish().unwrap();
        // The chunks may differ, but the files read back the same.
        let mut reader = PushReader::new(&again[..]).unwrap();
        for (entry, data) in &files {
            assert_eq!(reader.next_entry().unwrap().as_ref(), Some(entry));
            let mut got = Vec::new();
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(&got, data);
        }
        assert!(reader.next_entry().unwrap().is_none());
    }
});
