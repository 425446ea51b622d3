//! The per-epoch CSV log `lamina train` writes, and reading it back (a
//! resumed run plots the epochs of the runs before it too).

use super::train::EpochReport;

/// The log's first line.
pub const HEADER: &str =
    "epoch,train_loss,train_accuracy,val_loss,val_accuracy,samples_per_sec,seconds";

/// One epoch as a log line (with its newline); an absent value is empty.
///
/// ```
/// use lamina::engine::train::EpochReport;
/// use lamina::engine::train_log::{parse, row};
///
/// let r = EpochReport { epoch: 3, train_loss: 0.25, train_accuracy: Some(0.9), val_loss: None,
///     val_accuracy: None, samples_per_sec: 1000.0, seconds: 0.5 };
/// let parsed = parse(&format!("{}\n{}", lamina::engine::train_log::HEADER, row(&r))).unwrap();
/// assert_eq!(parsed, [r]);
/// ```
pub fn row(r: &EpochReport) -> String {
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    format!(
        "{},{},{},{},{},{:.1},{:.3}\n",
        r.epoch,
        r.train_loss,
        opt(r.train_accuracy),
        opt(r.val_loss),
        opt(r.val_accuracy),
        r.samples_per_sec,
        r.seconds
    )
}

/// A line of a log that is not one `row` wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LogError {
    pub line: usize,
    pub message: String,
}

/// The epochs of a log `row` wrote (header first).
pub fn parse(text: &str) -> Result<Vec<EpochReport>, LogError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == HEADER => {}
        _ => {
            return Err(LogError {
                line: 1,
                message: format!("expected the header `{HEADER}`"),
            })
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |message: String| LogError {
            line: i + 1,
            message,
        };
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != 7 {
            return Err(fail(format!("{} fields, expected 7", fields.len())));
        }
        let number = |k: usize| -> Result<Option<f64>, LogError> {
            if fields[k].is_empty() {
                return Ok(None);
            }
            fields[k].parse::<f64>().map(Some).map_err(|_| {
                fail(format!(
                    "{}: `{}` is not a number",
                    HEADER.split(',').nth(k).unwrap_or("?"),
                    fields[k]
                ))
            })
        };
        let required = |k: usize| -> Result<f64, LogError> {
            number(k)?.ok_or_else(|| {
                fail(format!(
                    "{} is empty",
                    HEADER.split(',').nth(k).unwrap_or("?")
                ))
            })
        };
        let epoch = fields[0]
            .parse::<usize>()
            .map_err(|_| fail(format!("epoch: `{}` is not a count", fields[0])))?;
        rows.push(EpochReport {
            epoch,
            train_loss: required(1)?,
            train_accuracy: number(2)?,
            val_loss: number(3)?,
            val_accuracy: number(4)?,
            samples_per_sec: required(5)?,
            seconds: required(6)?,
        });
    }
    Ok(rows)
}
