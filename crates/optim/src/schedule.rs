//! Learning-rate schedules with the semantics of diffusers/transformers `get_scheduler`.
//!
//! Each schedule is a pure function of the number of optimizer steps already taken (`step`, 0 for
//! the first update), exactly like PyTorch's `LambdaLR`: `lr(step) = base_lr * factor(step)`.
//! Every kind starts with `warmup_steps` of linear warmup from 0; the arithmetic (f64) follows
//! `diffusers/optimization.py` operation for operation, so values match the Python ones to the ulp.

use crate::OptimError;

/// The shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleKind {
    /// Constant after warmup (`constant`, or `constant_with_warmup` when warmup > 0).
    Constant,
    /// Linear decay to 0 at `total_steps`.
    Linear,
    /// Half a cosine period from 1 to 0 at `total_steps` (diffusers `cosine`, `num_cycles` 0.5).
    Cosine,
    /// Cosine decay restarted `num_cycles` times (diffusers `cosine_with_restarts`).
    CosineWithRestarts {
        /// Number of hard restarts.
        num_cycles: u32,
    },
    /// Polynomial decay from `base_lr` to `lr_end` with exponent `power`.
    Polynomial {
        /// Exponent of the decay (1 = linear).
        power: f64,
        /// The learning rate reached at `total_steps` and kept afterwards.
        lr_end: f64,
    },
}

/// A learning-rate schedule: kind, base learning rate, warmup and total steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    kind: ScheduleKind,
    base_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
}

impl LrSchedule {
    /// Validates and builds a schedule.
    ///
    /// `total_steps` is ignored by `Constant`. `Polynomial` needs `lr_end < base_lr` and
    /// `total_steps > warmup_steps` (diffusers raises/divides by zero otherwise).
    pub fn new(
        kind: ScheduleKind,
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Result<Self, OptimError> {
        if !(base_lr.is_finite() && base_lr >= 0.0) {
            return Err(OptimError::config(
                "base_lr",
                base_lr,
                "must be finite and >= 0",
            ));
        }
        match kind {
            ScheduleKind::Polynomial { power, lr_end } => {
                if !(lr_end < base_lr) || lr_end < 0.0 {
                    return Err(OptimError::config(
                        "lr_end",
                        lr_end,
                        "polynomial decay needs 0 <= lr_end < base_lr",
                    ));
                }
                if !power.is_finite() || power <= 0.0 {
                    return Err(OptimError::config("power", power, "must be finite and > 0"));
                }
                if total_steps <= warmup_steps {
                    return Err(OptimError::config(
                        "total_steps",
                        total_steps,
                        "polynomial decay needs total_steps > warmup_steps",
                    ));
                }
            }
            ScheduleKind::CosineWithRestarts { num_cycles } if num_cycles == 0 => {
                return Err(OptimError::config("num_cycles", num_cycles, "must be >= 1"));
            }
            _ => {}
        }
        Ok(Self {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
        })
    }

    /// Builds a schedule from a diffusers `get_scheduler` name: `constant` (warmup ignored, as in
    /// diffusers), `constant_with_warmup`, `linear`, `cosine`, `cosine_with_restarts`
    /// (`num_cycles`), `polynomial` (`power`, `lr_end`).
    pub fn from_name(
        name: &str,
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
        num_cycles: u32,
        power: f64,
        lr_end: f64,
    ) -> Result<Self, OptimError> {
        let (kind, warmup) = match name {
            "constant" => (ScheduleKind::Constant, 0),
            "constant_with_warmup" => (ScheduleKind::Constant, warmup_steps),
            "linear" => (ScheduleKind::Linear, warmup_steps),
            "cosine" => (ScheduleKind::Cosine, warmup_steps),
            "cosine_with_restarts" => (
                ScheduleKind::CosineWithRestarts { num_cycles },
                warmup_steps,
            ),
            "polynomial" => (ScheduleKind::Polynomial { power, lr_end }, warmup_steps),
            other => {
                return Err(OptimError::config(
                    "lr_scheduler",
                    other,
                    "expected one of constant, constant_with_warmup, linear, cosine, \
                     cosine_with_restarts, polynomial",
                ))
            }
        };
        Self::new(kind, base_lr, warmup, total_steps)
    }

    /// The schedule kind.
    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// The peak learning rate.
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// Number of warmup steps.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }

    /// Number of training steps the decay is laid out over.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Learning rate for the update after `step` completed updates.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }

    /// The `LambdaLR` multiplier for `step`.
    pub fn factor(&self, step: u64) -> f64 {
        let current = step as f64;
        let warmup = self.warmup_steps;
        let total = self.total_steps;
        if step < warmup {
            return current / (warmup.max(1) as f64);
        }
        let progress = || (current - warmup as f64) / (total.saturating_sub(warmup).max(1) as f64);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let remaining =
                    (total as f64 - current) / (total.saturating_sub(warmup).max(1) as f64);
                remaining.max(0.0)
            }
            ScheduleKind::Cosine => {
                let num_cycles = 0.5_f64;
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress()).cos()))
                    .max(0.0)
            }
            ScheduleKind::CosineWithRestarts { num_cycles } => {
                let progress = progress();
                if progress >= 1.0 {
                    return 0.0;
                }
                let phase = (f64::from(num_cycles) * progress) % 1.0;
                (0.5 * (1.0 + (std::f64::consts::PI * phase).cos())).max(0.0)
            }
            ScheduleKind::Polynomial { power, lr_end } => {
                let lr_init = self.base_lr;
                if step > total {
                    return lr_end / lr_init;
                }
                let lr_range = lr_init - lr_end;
                let decay_steps = (total - warmup) as f64;
                let pct_remaining = 1.0 - (current - warmup as f64) / decay_steps;
                let decay = lr_range * pct_remaining.powf(power) + lr_end;
                decay / lr_init
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_from_zero() {
        let s = LrSchedule::new(ScheduleKind::Constant, 2.0, 4, 10).unwrap();
        let got: Vec<f64> = (0..6).map(|k| s.lr(k)).collect();
        assert_eq!(got, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.0]);
    }

    #[test]
    fn rejects_bad_polynomial() {
        let k = ScheduleKind::Polynomial {
            power: 1.0,
            lr_end: 1.0,
        };
        assert!(LrSchedule::new(k, 1.0, 0, 10).is_err());
        let k = ScheduleKind::Polynomial {
            power: 1.0,
            lr_end: 0.0,
        };
        assert!(LrSchedule::new(k, 1.0, 10, 10).is_err());
        assert!(LrSchedule::from_name("onecycle", 1.0, 0, 10, 1, 1.0, 0.0).is_err());
    }

    #[test]
    fn linear_hits_zero_at_total() {
        let s = LrSchedule::new(ScheduleKind::Linear, 1.0, 2, 12).unwrap();
        assert_eq!(s.lr(12), 0.0);
        assert_eq!(s.lr(20), 0.0);
        assert_eq!(s.lr(7), 0.5);
    }
}
