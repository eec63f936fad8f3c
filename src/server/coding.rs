//! Content codings of whole-file answers: zstd or gzip, as the request's
//! `Accept-Encoding` allows (zstd first), for files that compress. Whether
//! a file compresses is judged from its first piece, so that media and
//! archives go as they are and cost no CPU; a coded answer is compressed
//! as it is sent, a piece at a time, and has no length (chunked in
//! HTTP/1.1). Ranges and resumed downloads stay uncoded: a range is of the
//! file's own bytes.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::HeaderMap;
use hyper::body::Frame;
use hyper::header;

use super::Body;

/// A content coding the server can answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Gzip,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The coded answer's entity tag: the file's own, marked with the
    /// coding (`"b3-HEX.zst"`), since its bytes differ.
    pub fn etag(self, etag: &str) -> String {
        let suffix = match self {
            Coding::Zstd => ".zst",
            Coding::Gzip => ".gz",
        };
        match etag.strip_suffix('"') {
            Some(open) => format!("{open}{suffix}\""),
            None => format!("{etag}{suffix}"),
        }
    }
}

/// The request takes `coding` (`zstd;q=0` refuses it, `*` takes any).
pub fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case(coding) || name == "*") && q > 0.0
        })
}

/// The coding to answer a whole-file GET in, if the request takes one.
pub fn chosen(headers: &HeaderMap) -> Option<Coding> {
    [Coding::Zstd, Coding::Gzip]
        .into_iter()
        .find(|c| accepts(headers, c.name()))
}

/// Files smaller than this go as they are: a coding's header and frame
/// cost about what it would save.
pub const MIN_CODED: u64 = 512;
/// Bytes of a file read and compressed to judge whether coding it pays.
const SAMPLE: usize = 64 * 1024;
/// Bytes read, compressed and sent at a time.
const PIECE: usize = 256 * 1024;
/// zstd's level: about as fast as the network on loopback, threefold on text.
const ZSTD_LEVEL: i32 = 3;
/// gzip's level: most of level 6's ratio at twice its speed.
const GZIP_LEVEL: u32 = 4;

/// Whether `file` compresses enough to be worth coding: its first piece
/// shrinks by at least an eighth at zstd's fastest level.
pub fn pays(file: &File, len: u64) -> bool {
    if len < MIN_CODED {
        return false;
    }
    let mut sample = vec![0; (len as usize).min(SAMPLE)];
    if std::os::unix::fs::FileExt::read_exact_at(file, &mut sample, 0).is_err() {
        return false;
    }
    zstd::bulk::compress(&sample, 1).is_ok_and(|c| c.len() < sample.len() - sample.len() / 8)
}

/// A compressor writing into a buffer that is emptied a piece at a time.
enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl Encoder {
    fn new(coding: Coding) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?)
            }
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
        })
    }

    /// Compresses `data` and takes what is ready to send.
    fn push(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let out = match self {
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
        };
        Ok(std::mem::take(out))
    }

    /// Ends the stream: what is left to send.
    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
        }
    }
}

/// The first `len` bytes of `file`, compressed as they are sent. Read
/// with `pread`: a file truncated meanwhile ends the body early (and the
/// client's check of the whole finds it).
pub fn compressed(file: File, len: u64, coding: Coding) -> Body {
    struct State {
        file: Arc<File>,
        at: u64,
        len: u64,
        encoder: Option<Encoder>,
    }
    let state = match Encoder::new(coding) {
        Ok(encoder) => State {
            file: Arc::new(file),
            at: 0,
            len,
            encoder: Some(encoder),
        },
        Err(e) => {
            let err = futures_util::stream::once(async move { Err::<Frame<Bytes>, _>(e) });
            return StreamBody::new(err).boxed();
        }
    };
    let frames = futures_util::stream::try_unfold(state, |mut state| async move {
        while let Some(mut encoder) = state.encoder.take() {
            let (at, len, file) = (state.at, state.len, state.file.clone());
            // Reading and compressing are blocking work: off the runtime.
            let (encoder, out, read) = tokio::task::spawn_blocking(move || {
                let mut piece = vec![0; (len - at).min(PIECE as u64) as usize];
                let read = match piece.len() {
                    0 => 0,
                    _ => std::os::unix::fs::FileExt::read_at(&*file, &mut piece, at)?,
                };
                let mut out = encoder.push(&piece[..read])?;
                if read == 0 || at + read as u64 >= len {
                    out.extend(encoder.finish()?);
                    return Ok::<_, io::Error>((None, out, read));
                }
                Ok((Some(encoder), out, read))
            })
            .await
            .map_err(io::Error::other)??;
            state.at += read as u64;
            state.encoder = encoder;
            if !out.is_empty() {
                return Ok(Some((Frame::data(Bytes::from(out)), state)));
            }
        }
        Ok(None)
    });
    StreamBody::new(frames).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, accept.parse().unwrap());
        h
    }

    #[test]
    fn codings_are_chosen_as_the_request_allows() {
        assert_eq!(chosen(&headers("gzip, zstd")), Some(Coding::Zstd));
        assert_eq!(chosen(&headers("gzip, zstd;q=0")), Some(Coding::Gzip));
        assert_eq!(chosen(&headers("br, deflate")), None);
        assert_eq!(chosen(&headers("*")), Some(Coding::Zstd));
        assert_eq!(chosen(&HeaderMap::new()), None);
        assert_eq!(Coding::Zstd.etag("\"b3-ab\""), "\"b3-ab.zst\"");
    }

    #[tokio::test]
    async fn a_coded_body_decodes_to_the_file() {
        let text: Vec<u8> = (0..600_000u32)
            .flat_map(|i| format!("line {} of a text\n", i % 977).into_bytes())
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&text).unwrap();
        assert!(pays(&file, text.len() as u64));
        for coding in [Coding::Zstd, Coding::Gzip] {
            let f = file.try_clone().unwrap();
            let body = compressed(f, text.len() as u64, coding);
            let coded = body.collect().await.unwrap().to_bytes();
            assert!(coded.len() < text.len() / 4, "{coding:?}: {}", coded.len());
            let back = match coding {
                Coding::Zstd => zstd::stream::decode_all(&coded[..]).unwrap(),
                Coding::Gzip => {
                    let mut out = Vec::new();
                    io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&coded[..]), &mut out)
                        .unwrap();
                    out
                }
            };
            assert!(back == text, "{coding:?} did not decode to the file");
        }
        let mut noise = vec![0u8; 100_000];
        rand::RngCore::fill_bytes(
            &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1),
            &mut noise,
        );
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&noise).unwrap();
        assert!(!pays(&f, noise.len() as u64), "noise does not compress");
    }
}
