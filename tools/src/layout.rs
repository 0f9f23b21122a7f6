//! Greenplum's screen furniture: rules, key = value blocks, tables whose
//! troubled rows end in arrows.

pub use gp_recovery_core::gpstate::columns;

/// The rule gprecoverseg draws around its plan.
pub const RULE: &str = "---------------------------------------------------------";
/// The rule of gpstate -e and -s.
pub const SHORT_RULE: &str = "----------------------------------------------------";
/// The rule of gpstate -m and -c.
pub const LONG_RULE: &str = "-------------------------------------------------------------";
pub const STARS: &str = "********************************";
pub const LONG_STARS: &str = "******************************************************************";
/// What TableLogger puts after a row it warns about.
pub const ARROWS: &str = "<<<<<<<<";

/// One line of a key = value block; `warn` ends it in arrows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// None for a heading inside the block (gpstate -s's "Segment Info").
    pub value: Option<String>,
    pub warn: bool,
    /// A rule across the block, which no column's width counts.
    pub rule: bool,
}

impl Entry {
    pub fn new(key: impl Into<String>, value: impl ToString) -> Entry {
        Entry { key: key.into(), value: Some(value.to_string()), warn: false, rule: false }
    }

    pub fn warn_if(mut self, warn: bool) -> Entry {
        self.warn = warn;
        self
    }

    pub fn heading(key: impl Into<String>) -> Entry {
        Entry { key: key.into(), value: None, warn: false, rule: false }
    }

    pub fn rule() -> Entry {
        Entry { key: String::new(), value: None, warn: false, rule: true }
    }
}

/// `   Failed instance host                 = sdw1` lines, keys padded alike.
pub fn key_values(entries: &[Entry]) -> Vec<String> {
    let cells: Vec<&Entry> = entries.iter().filter(|e| !e.rule).collect();
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|e| match &e.value {
            Some(v) => vec![e.key.clone(), format!("= {v}")],
            None => vec![e.key.clone()],
        })
        .collect();
    let warn: Vec<bool> = cells.iter().map(|e| e.warn).collect();
    let mut lines = with_arrows(columns(&rows), &warn).into_iter();
    entries.iter().map(|e| if e.rule { format!("   {SHORT_RULE}") } else { lines.next().unwrap_or_default() }).collect()
}

/// A table (header first) whose rows flagged in `warn` end in arrows;
/// `warn` has one flag per row after the header.
pub fn table(header: &[&str], rows: &[Vec<String>], warn: &[bool]) -> Vec<String> {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<String>>()];
    all.extend(rows.iter().cloned());
    let mut flags = vec![false];
    flags.extend_from_slice(warn);
    with_arrows(columns(&all), &flags)
}

fn with_arrows(lines: Vec<String>, warn: &[bool]) -> Vec<String> {
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| if warn.get(i).copied().unwrap_or(false) { format!("{l}   {ARROWS}") } else { l })
        .collect()
}

/// Bytes as a person reads them (binary units, one decimal).
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_blocks_line_up() {
        let lines = key_values(&[
            Entry::new("Synchronization mode", "Incremental"),
            Entry::new("Recovery Source instance directory", "/data/p0"),
            Entry::new("Recovery Target", "in-place").warn_if(true),
        ]);
        assert_eq!(
            lines,
            vec![
                "   Synchronization mode                 = Incremental",
                "   Recovery Source instance directory   = /data/p0",
                "   Recovery Target                      = in-place   <<<<<<<<",
            ]
        );
    }

    #[test]
    fn headings_sit_in_the_key_column_and_rules_take_no_width() {
        let lines = key_values(&[Entry::rule(), Entry::heading("Segment Info"), Entry::new("   Hostname", "sdw1")]);
        assert_eq!(
            lines,
            vec![
                "   ----------------------------------------------------",
                "   Segment Info",
                "      Hostname    = sdw1"
            ]
        );
    }

    #[test]
    fn tables_warn_with_arrows() {
        let lines = table(
            &["Mirror", "Port", "Status"],
            &[
                vec!["sdw1".into(), "7002".into(), "Passive".into()],
                vec!["sdw2".into(), "7003".into(), "Failed".into()],
            ],
            &[false, true],
        );
        assert_eq!(
            lines,
            vec!["   Mirror   Port   Status", "   sdw1     7002   Passive", "   sdw2     7003   Failed   <<<<<<<<"]
        );
    }

    #[test]
    fn bytes_read_as_people_read_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(116 << 20), "116.0 MB");
        assert_eq!(human_bytes(10 << 30), "10.0 GB");
    }
}
