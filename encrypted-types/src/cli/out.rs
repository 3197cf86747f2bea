//! Output: aligned tables for people, JSON for programs. Stops quietly on a closed pipe
//! (`... | head`) instead of failing the command.

use std::io::Write as _;

/// Writes one line to stdout; a closed pipe is not an error.
pub(super) fn line(text: &str) -> std::io::Result<()> {
    match writeln!(std::io::stdout(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A note for the operator on stderr, apart from the command's output.
pub(super) fn note(text: &str) -> std::io::Result<()> {
    writeln!(std::io::stderr(), "note: {text}")
}

/// Writes `value` as one line of JSON.
pub(super) fn json(value: &serde_json::Value) -> std::io::Result<()> {
    line(&value.to_string())
}

/// Writes a table: a header line, then one line per row, columns padded to their widest cell;
/// columns whose header starts with `>` are right-aligned (numbers).
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|h| h.trim_start_matches('>').chars().count())
        .collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for ((cell, w), h) in cells.zip(&widths).zip(headers) {
            let pad = w.saturating_sub(cell.chars().count());
            if !s.is_empty() {
                s.push_str("  ");
            }
            if h.starts_with('>') {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    line(&render(
        &mut headers.iter().map(|h| h.trim_start_matches('>')),
    ))?;
    for row in rows {
        line(&render(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// A duration in whole days, hours or seconds, as people read it.
pub(super) fn age(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s => format!("{s}s"),
    }
}

/// Parses `90d`, `12h`, `30m`, `45s` (or plain seconds).
pub(super) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 90d, 12h, 30m or 45s"))?;
    let per = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(format!("{s:?}: the unit is one of d, h, m, s")),
    };
    n.checked_mul(per)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Unix seconds now.
pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("90d").unwrap().as_secs(), 90 * 86_400);
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 12 * 3_600);
        assert_eq!(parse_duration("45").unwrap().as_secs(), 45);
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("9w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(age(91 * 86_400 + 5), "91d");
        assert_eq!(age(7_200), "2h");
    }
}
