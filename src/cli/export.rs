//! `intersync export DIR`: a folder made a complete source for any web
//! server (signatures, levels and the head document under `.intersync/`).

use std::path::Path;

use intersync::export::Export;

pub fn run(dir: &Path) -> anyhow::Result<()> {
    let export = Export::open(dir, Default::default())?;
    let (files, written) = export.write_static()?;
    println!(
        "intersync: exported {files} files of {} (journal at sequence {}, {written} new signatures)",
        dir.display(),
        export.head().latest_seq
    );
    Ok(())
}
