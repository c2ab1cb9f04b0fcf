//! LR schedules: values against diffusers `get_scheduler` (fixture), and invariants (proptest).

use crate::common;

use common::Fixture;
use fluxlora_optim::{LrSchedule, ScheduleKind};
use proptest::prelude::*;

#[test]
fn schedules_match_diffusers() {
    let fx = Fixture::load();
    let (steps, warmup, total, base) = (40u64, 5u64, 30u64, 1e-3);
    let cases = [
        (
            "constant",
            LrSchedule::from_name("constant", base, warmup, total, 1, 1.0, 1e-7).unwrap(),
        ),
        (
            "constant_with_warmup",
            LrSchedule::from_name("constant_with_warmup", base, warmup, total, 1, 1.0, 1e-7)
                .unwrap(),
        ),
        (
            "linear",
            LrSchedule::from_name("linear", base, warmup, total, 1, 1.0, 1e-7).unwrap(),
        ),
        (
            "cosine",
            LrSchedule::from_name("cosine", base, warmup, total, 1, 1.0, 1e-7).unwrap(),
        ),
        (
            "cosine_with_restarts",
            LrSchedule::from_name("cosine_with_restarts", base, warmup, total, 3, 1.0, 1e-7)
                .unwrap(),
        ),
        (
            "polynomial",
            LrSchedule::from_name("polynomial", base, warmup, total, 1, 2.0, 1e-7).unwrap(),
        ),
        (
            "polynomial_lr_end",
            LrSchedule::new(
                ScheduleKind::Polynomial {
                    power: 0.5,
                    lr_end: 2e-4,
                },
                base,
                warmup,
                total,
            )
            .unwrap(),
        ),
    ];
    for (name, sched) in cases {
        let want = fx.f64s(&format!("schedule.{name}"));
        assert_eq!(want.len() as u64, steps);
        for (k, w) in want.iter().enumerate() {
            let got = sched.lr(k as u64);
            assert!(
                (got - w).abs() <= 1e-15 * base.max(w.abs()),
                "{name} step {k}: {got} vs {w}"
            );
        }
    }
}

fn kind() -> impl Strategy<Value = ScheduleKind> {
    prop_oneof![
        Just(ScheduleKind::Constant),
        Just(ScheduleKind::Linear),
        Just(ScheduleKind::Cosine),
        (1u32..6).prop_map(|num_cycles| ScheduleKind::CosineWithRestarts { num_cycles }),
        (0.1f64..4.0, 0.0f64..0.5)
            .prop_map(|(power, f)| ScheduleKind::Polynomial { power, lr_end: f }),
    ]
}

proptest! {
    #[test]
    fn lr_stays_in_bounds_and_warmup_is_monotone(
        kind in kind(),
        base in 1e-6f64..2.0,
        warmup in 0u64..60,
        extra in 1u64..400,
    ) {
        let total = warmup + extra;
        // Polynomial's lr_end is a fraction of base here.
        let kind = match kind {
            ScheduleKind::Polynomial { power, lr_end } => {
                ScheduleKind::Polynomial { power, lr_end: lr_end * base }
            }
            k => k,
        };
        let s = LrSchedule::new(kind, base, warmup, total).unwrap();
        let eps = 1e-12 * base;
        if warmup > 0 {
            prop_assert_eq!(s.lr(0), 0.0);
        }
        for k in 0..warmup {
            prop_assert!(s.lr(k + 1) + eps >= s.lr(k), "warmup not monotone at {}", k);
        }
        prop_assert!(
            (s.lr(warmup) - base).abs() <= 1e-9 * base,
            "peak {} != base {}",
            s.lr(warmup),
            base
        );
        for k in 0..total + 50 {
            let lr = s.lr(k);
            prop_assert!(lr >= 0.0 && lr <= base + eps, "lr {} out of [0, {}] at {}", lr, base, k);
        }
        // After warmup, the decaying kinds never increase up to total_steps.
        if matches!(
            kind,
            ScheduleKind::Linear | ScheduleKind::Cosine | ScheduleKind::Polynomial { .. }
        ) {
            for k in warmup..total {
                prop_assert!(s.lr(k + 1) <= s.lr(k) + eps, "not decaying at {}", k);
            }
        }
        match kind {
            ScheduleKind::Linear
            | ScheduleKind::Cosine
            | ScheduleKind::CosineWithRestarts { .. } => {
                prop_assert!(s.lr(total) <= eps);
            }
            ScheduleKind::Polynomial { lr_end, .. } => {
                prop_assert!((s.lr(total + 10) - lr_end).abs() <= 1e-12 * base);
            }
            ScheduleKind::Constant => prop_assert_eq!(s.lr(total + 10), base),
        }
    }
}
