//! `intersync export DIR`: a folder made a complete source for any web
//! server (signatures, levels and the head document under `.intersync/`).

use std::path::PathBuf;

use intersync::export::Export;

#[derive(clap::Args)]
pub struct ExportArgs {
    pub dir: PathBuf,
    /// Bytes of small files in each pack (0: no packs). A first clone reads
    /// packs, a few GETs, instead of one GET a file.
    #[arg(long, default_value_t = intersync::export::packs::DEFAULT_SIZE)]
    pub pack_size: u64,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let export = Export::open(dir, Default::default())?;
    let (files, written) = export.write_static(args.pack_size)?;
    println!(
        "intersync: exported {files} files of {} (journal at sequence {}, {written} new signatures)",
        dir.display(),
        export.head().latest_seq
    );
    Ok(())
}
