//! Whole files compressed on the wire: zstd or gzip as the request takes,
//! only for files that compress, never for a range; a clone of a large
//! text file moves a fraction of it and installs the exact bytes.

use std::io::Read;

use crate::client::{sync_ok, tree};
use crate::util::{Dir, Server, get, random_bytes};

/// Text that compresses about tenfold, `len` bytes of it.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        let word = random_bytes(i % 5_000, 6);
        out.extend(format!("fn item_{}({:02x?}) -> u64 {{ {i} }}\n", i % 331, word).into_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn whole_files_that_compress_come_compressed_and_nothing_else_does() {
    let export = Dir::new();
    let source = text(3 << 20);
    let noise = random_bytes(9, 3 << 20);
    export.write("src/big.rs", &source);
    export.write("media/noise.bin", &noise);
    let server = Server::start(&export.path(""), &[]);

    let zstd = get(
        &server.url("src/big.rs"),
        &[("accept-encoding", "zstd, gzip")],
    );
    assert_eq!(zstd.status, 200);
    assert_eq!(zstd.header("content-encoding"), "zstd");
    assert!(
        zstd.header("etag").ends_with(".zst\""),
        "{:?}",
        zstd.headers
    );
    assert_eq!(zstd.header("vary"), "accept-encoding");
    assert!(
        zstd.body.len() < source.len() / 4,
        "{} bytes",
        zstd.body.len()
    );
    assert!(zstd::stream::decode_all(&zstd.body[..]).unwrap() == source);

    let gzip = get(&server.url("src/big.rs"), &[("accept-encoding", "gzip")]);
    assert_eq!(gzip.header("content-encoding"), "gzip");
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&gzip.body[..])
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == source, "gzip did not decode to the file");

    // Not asked, a range, or bytes that do not compress: the file as it is.
    for (path, headers) in [
        ("src/big.rs", &[][..]),
        ("src/big.rs", &[("accept-encoding", "zstd;q=0, br")][..]),
        ("media/noise.bin", &[("accept-encoding", "zstd, gzip")][..]),
    ] {
        let plain = get(&server.url(path), headers);
        assert_eq!(plain.status, 200);
        assert_eq!(plain.header("content-encoding"), "", "{path} {headers:?}");
        assert_eq!(plain.body.len(), 3 << 20);
    }
    let range = get(
        &server.url("src/big.rs"),
        &[("accept-encoding", "zstd"), ("range", "bytes=100-199")],
    );
    assert_eq!(range.status, 206);
    assert_eq!(range.header("content-encoding"), "");
    assert_eq!(range.body, &source[100..200]);

    // A clone brings the text compressed (it is too large for a batch) and
    // the noise as it is; both arrive exact.
    let clients = Dir::new();
    let wc = clients.path("wc");
    let (_, received) = sync_ok(&server.url, &wc);
    assert_eq!(tree(&wc), tree(&export.path("")));
    assert!(
        received < (noise.len() + source.len() / 4) as u64,
        "received {received} bytes for {} of noise and {} of text",
        noise.len(),
        source.len()
    );
}
