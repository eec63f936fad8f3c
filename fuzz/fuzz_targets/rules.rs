//! Any bytes as rsync filter rules (one rule, word-split rules, a merge
//! file, a per-directory merge file) and as an rsyncd.conf: parsed or
//! refused with an error, never a panic; matching any name with what was
//! parsed never panics either.
#![no_main]

use std::path::Path;

use intersync_compat::filter::{Filters, RuleSource, Side};
use intersync_compat::rsyncd::Config;
use intersync_compat::wildmatch::wildmatch;
use libfuzzer_sys::fuzz_target;

/// Every merge file holds the fuzz input.
struct Same<'a>(&'a [u8]);

impl RuleSource for Same<'_> {
    fn read(&self, _: &Path) -> std::io::Result<Option<Vec<u8>>> {
        Ok(Some(self.0.to_vec()))
    }
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let files = Same(bytes);
    let mut f = Filters::new(bytes.first().is_some_and(|b| b & 1 == 1));
    let _ = f.add_filter(&text, &files);
    let _ = f.add_words(&text, None, &files);
    let _ = f.add_words(&text, Some(true), &files);
    let _ = f.add_filter(": .rules", &files);
    if f.enter_root(Path::new("/r"), &files).is_ok() {
        let _ = f.enter_dir(b"sub", Path::new("/r/sub"), &files);
        for name in [&b"a"[..], b"sub/x.o", b"sub/deep/er", bytes] {
            for dir in [false, true] {
                let _ = f.check(name, dir, Side::Sender, false);
                let _ = f.check(name, dir, Side::Receiver, true);
            }
        }
    }
    let half = bytes.len() / 2;
    let _ = wildmatch(&bytes[..half], &bytes[half..]);
    let _ = Config::parse(&text, "fuzz");
});
