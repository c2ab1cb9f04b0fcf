//! Watching a run: the per-step CSV log (`step,loss,lr,sigma_mean,seconds`, plus `val_loss` in
//! runs with a validation split — its cell empty on steps without validation; readers find the
//! column by name, see [`crate::orchestration::monitor::read_validation_history`]), the progress
//! bar (step, s/it,
//! ETA, smoothed loss, LR, last validation loss), and the NaN/inf guard.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::TrainError;

/// CSV header.
pub const CSV_HEADER: &str = "step,loss,lr,sigma_mean,seconds";
/// The extra column of runs with a validation split.
pub const VAL_COLUMN: &str = "val_loss";

/// One logged optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// Optimizer steps completed (1 for the first).
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f32,
    /// Learning rate applied (after Prodigy's `d`).
    pub lr: f64,
    /// Mean σ of the step.
    pub sigma_mean: f32,
    /// Wall time of the step.
    pub seconds: f64,
    /// Validation loss after this step, on steps that validate.
    pub val_loss: Option<f32>,
}

/// Appends one line per step to a CSV file, flushed each time so a crash loses nothing.
#[derive(Debug)]
pub struct CsvLog {
    path: PathBuf,
    file: File,
    validation: bool,
}

impl CsvLog {
    /// Creates (or truncates) the log with its header.
    pub fn create(path: &Path) -> Result<Self, TrainError> {
        Self::create_for(path, false)
    }

    /// [`create`](Self::create), with the `val_loss` column when `validation` is true.
    pub fn create_for(path: &Path, validation: bool) -> Result<Self, TrainError> {
        let mut file = File::create(path).map_err(|e| TrainError::io(path, e))?;
        let header = if validation {
            format!("{CSV_HEADER},{VAL_COLUMN}")
        } else {
            CSV_HEADER.to_string()
        };
        writeln!(file, "{header}").map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            validation,
        })
    }

    /// Opens an existing log for a run resumed after `step`: rows of later steps (written after
    /// the checkpoint, before an interruption) are dropped. Creates the log if there is none.
    pub fn resume(path: &Path, step: u64) -> Result<Self, TrainError> {
        Self::resume_for(path, step, false)
    }

    /// [`resume`](Self::resume), with the `val_loss` column when `validation` is true.
    pub fn resume_for(path: &Path, step: u64, validation: bool) -> Result<Self, TrainError> {
        Self::resume_with(path, &CsvHistory::read(path, step)?, validation)
    }

    /// Rewrites the log at `path` with the rows of `history` (read once, on resume), then
    /// appends from there.
    pub fn resume_with(
        path: &Path,
        history: &CsvHistory,
        validation: bool,
    ) -> Result<Self, TrainError> {
        let mut log = Self::create_for(path, validation)?;
        for l in &history.rows {
            writeln!(log.file, "{l}").map_err(|e| TrainError::io(path, e))?;
        }
        Ok(log)
    }

    /// Appends a step.
    pub fn write(&mut self, r: &StepRecord) -> Result<(), TrainError> {
        let val = match (self.validation, r.val_loss) {
            (false, _) => String::new(),
            (true, v) => format!(",{}", v.map(|v| v.to_string()).unwrap_or_default()),
        };
        writeln!(
            self.file,
            "{},{},{},{},{:.4}{val}",
            r.step, r.loss, r.lr, r.sigma_mean, r.seconds
        )
        .and_then(|()| self.file.flush())
        .map_err(|e| TrainError::io(&self.path, e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A CSV log as read back once on resume: its rows up to the checkpoint's step, and the loss
/// and validation-loss series they hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsvHistory {
    rows: Vec<String>,
    /// `(step, loss)` of every kept row.
    pub losses: Vec<(u64, f64)>,
    /// `(step, val_loss)` of the kept rows whose `val_loss` cell is set (none in logs without
    /// the column).
    pub validation: Vec<(u64, f64)>,
}

impl CsvHistory {
    /// Reads the log at `path`, keeping the rows of steps up to `upto`; no file is no history.
    pub fn read(path: &Path, upto: u64) -> Result<Self, TrainError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text, upto)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(TrainError::io(path, e)),
        }
    }

    /// The history in a log's text (header first), rows of steps up to `upto`.
    pub fn parse(text: &str, upto: u64) -> Self {
        let mut lines = text.lines();
        let val_col = lines
            .next()
            .and_then(|h| h.split(',').position(|c| c.trim() == VAL_COLUMN));
        let mut h = Self::default();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            let Some(step) = f
                .first()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|&s| s <= upto)
            else {
                continue;
            };
            h.rows.push(line.to_string());
            if let Some(loss) = f.get(1).and_then(|s| s.parse().ok()) {
                h.losses.push((step, loss));
            }
            if let Some(v) = val_col
                .and_then(|c| f.get(c))
                .and_then(|s| s.trim().parse().ok())
            {
                h.validation.push((step, v));
            }
        }
        h
    }
}

/// Errors when the loss is NaN or infinite, naming the step and the likely causes.
pub fn check_finite(step: u64, loss: f32, lr: f64) -> Result<(), TrainError> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFiniteLoss {
            step,
            value: loss,
            lr,
        })
    }
}

/// Exponential moving average of the loss (kohya's progress bar shows a windowed mean; an EMA
/// with the same ~20-step memory needs no buffer).
#[derive(Debug, Clone, Copy, Default)]
pub struct SmoothedLoss {
    value: Option<f64>,
}

impl SmoothedLoss {
    /// Adds a value and returns the smoothed loss.
    pub fn push(&mut self, loss: f32) -> f64 {
        let v = match self.value {
            None => f64::from(loss),
            Some(prev) => 0.95 * prev + 0.05 * f64::from(loss),
        };
        self.value = Some(v);
        v
    }
}

/// The terminal progress bar.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    smooth: SmoothedLoss,
    last_val: Option<(u64, f32)>,
}

impl Progress {
    /// A bar over `total` steps starting at `start`; hidden when `visible` is false (tests,
    /// non-terminal output is hidden by indicatif anyway).
    pub fn new(total: u64, start: u64, visible: bool) -> Self {
        let bar = if visible {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(start);
        Self {
            bar,
            smooth: SmoothedLoss::default(),
            last_val: None,
        }
    }

    /// Shows a finished step.
    pub fn update(&mut self, r: &StepRecord) {
        let avg = self.smooth.push(r.loss);
        self.bar.set_position(r.step);
        if let Some(v) = r.val_loss {
            self.last_val = Some((r.step, v));
        }
        self.bar.set_message(self.message(r, avg));
    }

    fn message(&self, r: &StepRecord, avg: f64) -> String {
        let mut m = format!("{:.2} s/it  loss {avg:.4}  lr {:.2e}", r.seconds, r.lr);
        if let Some((step, v)) = self.last_val {
            m.push_str(&format!("  val {v:.4} @{step}"));
        }
        m
    }

    /// Prints a line above the bar; on stderr by itself when the bar is hidden (`--no-progress`,
    /// or output that is not a terminal), where indicatif would drop it.
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Leaves the bar with a final message.
    pub fn finish(&self, message: &str) {
        self.bar.finish_with_message(message.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_inf_losses_are_errors_naming_the_step() {
        assert!(check_finite(3, 0.5, 1e-4).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = check_finite(17, bad, 1e-4).unwrap_err().to_string();
            assert!(e.contains("step 17") && e.contains("learning rate"), "{e}");
        }
    }

    #[test]
    fn csv_resume_drops_rows_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.csv");
        let mut log = CsvLog::create_for(&p, true).unwrap();
        for step in 1..=5 {
            log.write(&StepRecord {
                step,
                loss: 0.5,
                lr: 1e-4,
                sigma_mean: 0.3,
                seconds: 0.1,
                val_loss: (step == 2).then_some(0.75),
            })
            .unwrap();
        }
        drop(log);
        let mut log = CsvLog::resume_for(&p, 3, true).unwrap();
        log.write(&StepRecord {
            step: 4,
            loss: 0.25,
            lr: 1e-4,
            sigma_mean: 0.3,
            seconds: 0.1,
            val_loss: None,
        })
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let steps: Vec<&str> = text.lines().map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(steps, vec!["step", "1", "2", "3", "4"]);
        assert_eq!(
            text.lines().next(),
            Some("step,loss,lr,sigma_mean,seconds,val_loss")
        );
        assert!(text.lines().nth(4).unwrap().starts_with("4,0.25,"));
        // The validation cell: a value on step 2, empty elsewhere; six columns on every row.
        assert!(text.lines().all(|l| l.split(',').count() == 6), "{text}");
        assert!(text.lines().nth(2).unwrap().ends_with(",0.75"), "{text}");
        assert!(text.lines().nth(4).unwrap().ends_with(','), "{text}");

        // Without validation: the five columns, the value of a record ignored.
        let q = dir.path().join("plain.csv");
        let mut log = CsvLog::create(&q).unwrap();
        log.write(&StepRecord {
            step: 1,
            loss: 0.5,
            lr: 1e-4,
            sigma_mean: 0.3,
            seconds: 0.1,
            val_loss: Some(0.75),
        })
        .unwrap();
        let text = std::fs::read_to_string(&q).unwrap();
        assert_eq!(
            text,
            "step,loss,lr,sigma_mean,seconds\n1,0.5,0.0001,0.3,0.1000\n"
        );
    }

    #[test]
    fn progress_message_shows_the_last_validation_loss() {
        let mut p = Progress::new(10, 0, false);
        let r = |step, val_loss| StepRecord {
            step,
            loss: 0.5,
            lr: 1e-4,
            sigma_mean: 0.3,
            seconds: 0.1,
            val_loss,
        };
        p.update(&r(1, None));
        assert!(!p.message(&r(1, None), 0.5).contains("val"));
        p.update(&r(2, Some(0.123_45)));
        p.update(&r(3, None));
        let m = p.message(&r(3, None), 0.5);
        assert!(m.contains("val 0.1235 @2"), "{m}");
    }

    #[test]
    fn smoothing_starts_at_the_first_value_and_moves_slowly() {
        let mut s = SmoothedLoss::default();
        assert_eq!(s.push(1.0), 1.0);
        assert!((s.push(0.0) - 0.95).abs() < 1e-12);
    }
}
