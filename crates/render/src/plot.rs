//! [`LossPlot`]: a PNG line chart of the training loss — raw values faint, their EMA-smoothed
//! curve bold — with optional validation-loss points, axes, "nice" ticks with labels, a title
//! and a legend. Non-finite points are skipped; with no finite point the chart says
//! "no data yet". Saved atomically like the sample grids.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::RenderError;
use crate::font::{draw_text, text_height, text_width};
use crate::grid::save_png;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([232, 232, 232]);
const LABEL: Rgb<u8> = Rgb([40, 40, 40]);
/// Raw training loss (faint).
pub const RAW_COLOR: Rgb<u8> = Rgb([178, 205, 232]);
/// EMA-smoothed training loss.
pub const EMA_COLOR: Rgb<u8> = Rgb([31, 119, 180]);
/// Validation loss.
pub const VAL_COLOR: Rgb<u8> = Rgb([230, 110, 10]);

const MARGIN_LEFT: u32 = 64;
const MARGIN_RIGHT: u32 = 16;
const MARGIN_TOP: u32 = 28;
const MARGIN_BOTTOM: u32 = 36;

/// A loss chart's look.
#[derive(Debug, Clone, PartialEq)]
pub struct LossPlot {
    /// Image width in pixels (at least 200).
    pub width: u32,
    /// Image height in pixels (at least 120).
    pub height: u32,
    /// EMA smoothing factor in [0, 1): 0 = no smoothing (TensorBoard's "smoothing").
    pub smoothing: f64,
    /// Title drawn top left.
    pub title: String,
}

impl Default for LossPlot {
    /// 800×400, smoothing 0.95, title "loss".
    fn default() -> Self {
        Self {
            width: 800,
            height: 400,
            smoothing: 0.95,
            title: "loss".into(),
        }
    }
}

/// The finite points of `points`, sorted by step.
fn finite(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let mut v: Vec<(u64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
    v.sort_by_key(|p| p.0);
    v
}

/// Debiased exponential moving average of the finite points (sorted by step), as TensorBoard
/// smooths scalars: `m ← w·m + (1 − w)·v`, reported as `m / (1 − wⁿ)` after n points,
/// i.e. the mean of the values seen so far weighted by `w^age`.
pub fn ema(points: &[(u64, f64)], smoothing: f64) -> Vec<(u64, f64)> {
    let w = smoothing.clamp(0.0, 0.999_999);
    let mut m = 0.0;
    let mut debias = 1.0;
    finite(points)
        .into_iter()
        .map(|(s, v)| {
            m = w * m + (1.0 - w) * v;
            debias *= w;
            (s, m / (1.0 - debias))
        })
        .collect()
}

/// Tick spacing 1, 2 or 5 × 10^k giving about `target` ticks over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Multiples of `step` inside `[lo, hi]`.
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A y tick label with as many decimals as the spacing needs.
fn y_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
    format!("{v:.decimals$}")
}

/// Maps data coordinates to pixels inside the plot rectangle.
struct Frame {
    left: f64,
    top: f64,
    w: f64,
    h: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> i64 {
        (self.left + (x - self.x0) / (self.x1 - self.x0) * (self.w - 1.0)).round() as i64
    }
    fn py(&self, y: f64) -> i64 {
        (self.top + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * (self.h - 1.0)).round() as i64
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Bresenham line; `thick` adds the pixel below each one.
fn line(
    img: &mut RgbImage,
    (mut x0, mut y0): (i64, i64),
    (x1, y1): (i64, i64),
    c: Rgb<u8>,
    thick: bool,
) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        put(img, x0, y0, c);
        if thick {
            put(img, x0, y0 + 1, c);
        }
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

fn polyline(img: &mut RgbImage, f: &Frame, pts: &[(u64, f64)], c: Rgb<u8>, thick: bool) {
    let px: Vec<(i64, i64)> = pts
        .iter()
        .map(|&(s, v)| (f.px(s as f64), f.py(v)))
        .collect();
    match px.as_slice() {
        [] => {}
        [p] => line(img, *p, *p, c, thick),
        _ => px.windows(2).for_each(|w| line(img, w[0], w[1], c, thick)),
    }
}

impl LossPlot {
    /// Renders the chart of `train` (step, loss) and `validation` (step, loss) points.
    pub fn render(&self, train: &[(u64, f64)], validation: &[(u64, f64)]) -> RgbImage {
        let (w, h) = (self.width.max(200), self.height.max(120));
        let mut img = RgbImage::from_pixel(w, h, WHITE);
        let raw = finite(train);
        let smooth = ema(&raw, self.smoothing);
        let val = finite(validation);
        let (pw, ph) = (
            w - MARGIN_LEFT - MARGIN_RIGHT,
            h - MARGIN_TOP - MARGIN_BOTTOM,
        );
        let all: Vec<(u64, f64)> = raw.iter().chain(&val).copied().collect();
        let title = match smooth.last() {
            Some(&(s, v)) => format!("{} · step {s} · EMA {v:.4}", self.title),
            None => self.title.clone(),
        };
        draw_text(&mut img, i64::from(MARGIN_LEFT), 8, &title, 1, LABEL);
        for (x, y) in (0..pw)
            .map(|x| (MARGIN_LEFT + x, MARGIN_TOP + ph - 1))
            .chain((0..ph).map(|y| (MARGIN_LEFT, MARGIN_TOP + y)))
        {
            img.put_pixel(x, y, AXIS);
        }
        if all.is_empty() {
            let msg = "no data yet";
            let (tw, th) = (text_width(msg, 2), text_height(2));
            let (cx, cy) = (MARGIN_LEFT + pw / 2, MARGIN_TOP + ph / 2);
            draw_text(
                &mut img,
                i64::from(cx) - i64::from(tw / 2),
                i64::from(cy) - i64::from(th / 2),
                msg,
                2,
                LABEL,
            );
            return img;
        }
        let (mut x0, mut x1) = (
            all.iter().map(|p| p.0).min().unwrap_or(0) as f64,
            all.iter().map(|p| p.0).max().unwrap_or(0) as f64,
        );
        if x1 <= x0 {
            (x0, x1) = (x0 - 1.0, x1 + 1.0);
        }
        let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1e-3) * 0.1
        };
        let f = Frame {
            left: f64::from(MARGIN_LEFT),
            top: f64::from(MARGIN_TOP),
            w: f64::from(pw),
            h: f64::from(ph),
            x0,
            x1,
            y0: lo - pad,
            y1: hi + pad,
        };
        let ystep = nice_step(f.y1 - f.y0, 5.0);
        for t in ticks(f.y0, f.y1, ystep) {
            let y = f.py(t);
            for x in MARGIN_LEFT + 1..MARGIN_LEFT + pw {
                put(&mut img, i64::from(x), y, GRID);
            }
            put(&mut img, i64::from(MARGIN_LEFT) - 1, y, AXIS);
            put(&mut img, i64::from(MARGIN_LEFT) - 2, y, AXIS);
            let label = y_label(t, ystep);
            let lx = i64::from(MARGIN_LEFT) - 5 - i64::from(text_width(&label, 1));
            draw_text(&mut img, lx, y - 3, &label, 1, LABEL);
        }
        let xstep = nice_step(x1 - x0, 8.0).max(1.0);
        for t in ticks(x0, x1, xstep) {
            let x = f.px(t);
            for y in MARGIN_TOP..MARGIN_TOP + ph - 1 {
                put(&mut img, x, i64::from(y), GRID);
            }
            let ybase = i64::from(MARGIN_TOP + ph);
            put(&mut img, x, ybase, AXIS);
            put(&mut img, x, ybase + 1, AXIS);
            let label = format!("{}", t as u64);
            draw_text(
                &mut img,
                x - i64::from(text_width(&label, 1) / 2),
                ybase + 5,
                &label,
                1,
                LABEL,
            );
        }
        let xl = "step";
        draw_text(
            &mut img,
            i64::from(MARGIN_LEFT + pw / 2) - i64::from(text_width(xl, 1) / 2),
            i64::from(h) - 12,
            xl,
            1,
            LABEL,
        );
        polyline(&mut img, &f, &raw, RAW_COLOR, false);
        polyline(&mut img, &f, &smooth, EMA_COLOR, true);
        polyline(&mut img, &f, &val, VAL_COLOR, false);
        for &(s, v) in &val {
            let (cx, cy) = (f.px(s as f64), f.py(v));
            for dy in -2..=2 {
                for dx in -2..=2 {
                    put(&mut img, cx + dx, cy + dy, VAL_COLOR);
                }
            }
        }
        self.legend(&mut img, !raw.is_empty(), !val.is_empty());
        img
    }

    /// Legend entries right-aligned in the top margin.
    fn legend(&self, img: &mut RgbImage, has_train: bool, has_val: bool) {
        let mut entries: Vec<(&str, Rgb<u8>)> = Vec::new();
        if has_train {
            entries.push(("train", RAW_COLOR));
            entries.push(("train EMA", EMA_COLOR));
        }
        if has_val {
            entries.push(("validation", VAL_COLOR));
        }
        let mut x = i64::from(img.width() - MARGIN_RIGHT);
        for (label, color) in entries.into_iter().rev() {
            x -= i64::from(text_width(label, 1));
            draw_text(img, x, 8, label, 1, LABEL);
            x -= 18;
            for dx in 0..14 {
                put(img, x + dx, 11, color);
                put(img, x + dx, 12, color);
            }
            x -= 12;
        }
    }

    /// Renders and writes the chart to `path` atomically (PNG with `Title` / `Software` text).
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        train: &[(u64, f64)],
        validation: &[(u64, f64)],
    ) -> Result<(), RenderError> {
        let text = [
            ("Title".to_string(), self.title.clone()),
            ("Software".to_string(), "fluxlora".to_string()),
        ];
        save_png(path.as_ref(), &self.render(train, validation), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Mean row of `color` pixels in the plot columns `cols`.
    fn mean_row(img: &RgbImage, color: Rgb<u8>, cols: std::ops::Range<u32>) -> f64 {
        let ys: Vec<u32> = cols
            .flat_map(|x| (MARGIN_TOP..img.height() - MARGIN_BOTTOM).map(move |y| (x, y)))
            .filter(|&(x, y)| *img.get_pixel(x, y) == color)
            .map(|(_, y)| y)
            .collect();
        assert!(!ys.is_empty(), "no {color:?} pixels in those columns");
        ys.iter().map(|&y| f64::from(y)).sum::<f64>() / ys.len() as f64
    }

    fn series(f: impl Fn(f64) -> f64) -> Vec<(u64, f64)> {
        (0..200u64)
            .map(|s| {
                (
                    s * 5,
                    f(s as f64) + 0.02 * ((s * 7919 % 13) as f64 / 13.0 - 0.5),
                )
            })
            .collect()
    }

    #[test]
    fn the_curve_follows_the_data() {
        let p = LossPlot {
            smoothing: 0.6,
            ..LossPlot::default()
        };
        let (l, r) = (
            MARGIN_LEFT + 40..MARGIN_LEFT + 80,
            p.width - MARGIN_RIGHT - 80..p.width - MARGIN_RIGHT - 40,
        );
        let down = p.render(&series(|s| 1.0 - s / 250.0), &[]);
        assert!(
            mean_row(&down, EMA_COLOR, l.clone()) + 100.0 < mean_row(&down, EMA_COLOR, r.clone())
        );
        let up = p.render(&series(|s| 0.2 + s / 250.0), &[]);
        assert!(mean_row(&up, EMA_COLOR, l) > mean_row(&up, EMA_COLOR, r) + 100.0);
        assert!(up.pixels().any(|px| *px == RAW_COLOR));
    }

    #[test]
    fn validation_points_are_drawn() {
        let p = LossPlot::default();
        let img = p.render(&series(|_| 0.5), &[(100, 0.4), (995, 0.6)]);
        let x = p.width - MARGIN_RIGHT - 2;
        // The later validation point is the highest value: it sits near the top of the plot.
        let rows: Vec<u32> = (MARGIN_TOP..p.height - MARGIN_BOTTOM)
            .filter(|&y| *img.get_pixel(x, y) == VAL_COLOR)
            .collect();
        assert!(
            !rows.is_empty() && rows.iter().all(|&y| y < MARGIN_TOP + 40),
            "{rows:?}"
        );
    }

    #[test]
    fn empty_and_non_finite_input_say_no_data() {
        let p = LossPlot::default();
        let empty = p.render(&[], &[]);
        assert_eq!(empty.dimensions(), (800, 400));
        assert!(!empty.pixels().any(|px| *px == EMA_COLOR));
        let centre = (300..500).flat_map(|x| (180..220).map(move |y| (x, y)));
        assert!(
            centre
                .into_iter()
                .any(|(x, y)| *empty.get_pixel(x, y) == LABEL),
            "the message is drawn"
        );
        let junk = p.render(
            &[(1, f64::NAN), (2, f64::INFINITY)],
            &[(3, f64::NEG_INFINITY)],
        );
        assert_eq!(junk, empty);
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let p = LossPlot::default();
        let mut pts = series(|s| 1.0 - s / 250.0);
        let clean = p.render(&pts, &[]);
        pts.insert(50, (252, f64::NAN));
        pts.insert(120, (602, f64::INFINITY));
        assert_eq!(p.render(&pts, &[]), clean);
        let single = p.render(&[(10, 0.3)], &[]);
        assert!(single.pixels().any(|px| *px == EMA_COLOR));
    }

    #[test]
    fn ema_is_the_age_weighted_mean() {
        // w = 0.5 over [1, 3]: (0.5·1 + 1·3) / 1.5.
        let e = ema(&[(0, 1.0), (1, f64::NAN), (2, 3.0)], 0.5);
        assert_eq!(e.len(), 2);
        assert!((e[0].1 - 1.0).abs() < 1e-12);
        assert!((e[1].1 - 3.5 / 1.5).abs() < 1e-12);
        assert_eq!(e[1].0, 2);
    }

    #[test]
    fn save_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        LossPlot::default()
            .save(&path, &series(|s| 1.0 / (1.0 + s)), &[(500, 0.1)])
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("loss.png")]);
        assert_eq!(
            image::open(&path).unwrap().to_rgb8().dimensions(),
            (800, 400)
        );
    }

    proptest! {
        #[test]
        fn ema_of_a_constant_is_that_constant(
            c in -10.0f64..10.0,
            n in 1usize..50,
            w in 0.0f64..0.99,
        ) {
            let pts: Vec<(u64, f64)> = (0..n as u64).map(|s| (s, c)).collect();
            for (_, v) in ema(&pts, w) {
                prop_assert!((v - c).abs() < 1e-9 * c.abs().max(1.0));
            }
        }

        #[test]
        fn ticks_are_nice_and_inside(lo in -100.0f64..100.0, span in 1e-6f64..1e6) {
            let step = nice_step(span, 5.0);
            let mant = step / 10f64.powf(step.log10().floor());
            prop_assert!([1.0, 2.0, 5.0, 10.0].iter().any(|m| (mant - m).abs() < 1e-9));
            let t = ticks(lo, lo + span, step);
            prop_assert!(!t.is_empty() && t.len() <= 11);
            prop_assert!(t.iter().all(|&v| v >= lo - 1e-9 * span && v <= lo + span + 1e-9 * span));
        }
    }
}
