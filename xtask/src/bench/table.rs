//! Markdown tables, padded so they read as well in a terminal as in a rendered file.

/// A table of text cells; the first column is left-aligned, the others right-aligned.
pub(super) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(super) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = cells.get(i).map_or("", String::as_str);
                    if i == 0 {
                        format!("{cell:<width$}", width = widths[i])
                    } else {
                        format!("{cell:>width$}", width = widths[i])
                    }
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&self.headers);
        // Each cell spans its width plus a space either side; the colon gives the alignment.
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let dashes = "-".repeat(w + 1);
                if i == 0 {
                    format!(":{dashes}")
                } else {
                    format!("{dashes}:")
                }
            })
            .collect();
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Milliseconds with two decimals, or "n/a".
pub(super) fn ms(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "n/a".to_owned()
    }
}

/// Microseconds, whole, or "n/a".
pub(super) fn us(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.0}")
    } else {
        "n/a".to_owned()
    }
}

/// Requests per second, whole.
pub(super) fn rps(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.0}")
    } else {
        "n/a".to_owned()
    }
}

/// Mebibytes from kibibytes, one decimal.
pub(super) fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0))
}

/// The direction of a target.
#[derive(Clone, Copy)]
pub(super) enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    pub(super) fn met(self, value: f64) -> Option<bool> {
        if !value.is_finite() {
            return None;
        }
        Some(match self {
            Self::AtMost(limit) => value <= limit,
            Self::AtLeast(limit) => value >= limit,
        })
    }

    /// The target as a column header suffix: "≤ 1.10", "≥ 5".
    pub(super) fn label(self) -> String {
        match self {
            Self::AtMost(limit) => format!("≤ {limit}"),
            Self::AtLeast(limit) => format!("≥ {limit}"),
        }
    }
}

/// A figure with whether it meets its target: "1.04 met", "1.31 not met".
pub(super) fn marked(text: String, value: f64, target: Target) -> String {
    match target.met(value) {
        Some(true) => format!("{text} met"),
        Some(false) => format!("{text} not met"),
        None => format!("{text} (no figure)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_aligned_markdown_table() {
        let mut table = Table::new(&["case", "p50"]);
        table.row(vec!["kpi".to_owned(), "1.25".to_owned()]);
        table.row(vec!["top pages".to_owned(), "12.50".to_owned()]);
        assert_eq!(
            table.render(),
            "| case      |   p50 |\n|:----------|------:|\n| kpi       |  1.25 |\n| top pages | 12.50 |\n"
        );
    }

    #[test]
    fn marks_targets() {
        assert_eq!(marked("1.04".into(), 1.04, Target::AtMost(1.1)), "1.04 met");
        assert_eq!(marked("4.0".into(), 4.0, Target::AtLeast(5.0)), "4.0 not met");
        assert_eq!(Target::AtMost(1.1).label(), "≤ 1.1");
    }
}
