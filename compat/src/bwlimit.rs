//! rsync's `--bwlimit=RATE`: a plain number is KiB per second; a suffix
//! K, M or G (or KiB, MiB, GiB) scales by 1024, KB, MB or GB by 1000, and B
//! means bytes. 0 means no limit. Fractions are allowed (`1.5M`).

/// Bytes per second for an rsync `--bwlimit` value; `Ok(0)` is "no limit".
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid rate {text:?}"))?;
    let scale: f64 = match suffix.to_ascii_uppercase().as_str() {
        "" | "K" | "KIB" => 1024.0,
        "B" => 1.0,
        "KB" => 1000.0,
        "M" | "MIB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "G" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        _ => return Err(format!("invalid rate suffix in {text:?}")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(format!("invalid rate {text:?}"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn rsyncs_units() {
        assert_eq!(parse("100"), Ok(102_400));
        assert_eq!(parse("1.5M"), Ok(1_572_864));
        assert_eq!(parse("2MB"), Ok(2_000_000));
        assert_eq!(parse("512B"), Ok(512));
        assert_eq!(parse("0"), Ok(0));
        assert!(parse("fast").is_err());
        assert!(parse("10X").is_err());
    }
}
