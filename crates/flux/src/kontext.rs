//! FLUX.1 Kontext: the Flux.1-dev transformer, conditioned on a control image whose clean latent
//! tokens are appended after the noisy target's (BFL `prepare_kontext` / `denoise`).
//!
//! - The control's tokens are packed like the target's ([`crate::latents::pack`]); their
//!   position ids are [`crate::latents::control_ids`], the target's with the first axis set to 1.
//! - The transformer runs over `target ‖ control` and only the target tokens' output is the
//!   prediction ([`crate::FluxInputs::img_cond_seq`]).
//! - Before encoding, BFL resizes the control to the one of [`PREFERRED_RESOLUTIONS`] whose
//!   aspect ratio is nearest ([`control_size`]); the target defaults to the same size.

/// BFL's `PREFERED_KONTEXT_RESOLUTIONS` (width, height): the sizes Kontext was trained at, all
/// about one megapixel.
pub const PREFERRED_RESOLUTIONS: [(u32, u32); 17] = [
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
];

/// The pixel area of [`PREFERRED_RESOLUTIONS`]' square entry, 1024².
pub const REFERENCE_AREA: u64 = 1024 * 1024;

/// The size (width, height) in pixels BFL's `prepare_kontext` resizes a `width × height` control
/// image to: the preferred resolution of the nearest aspect ratio (the first one on a tie), each
/// side rounded down to a multiple of 16.
///
/// `area` rescales the table for models trained at another size (the tiny world's 64²): the
/// chosen entry is scaled by `√(area / 1024²)` before the rounding, and no side goes below 16.
/// With `area = 1024²` this is exactly BFL's choice.
pub fn control_size(width: u32, height: u32, area: u64) -> (u32, u32) {
    let aspect = f64::from(width.max(1)) / f64::from(height.max(1));
    // BFL: min over (|aspect − w/h|, w, h), so ties go to the smaller width.
    let (w, h) = PREFERRED_RESOLUTIONS
        .iter()
        .copied()
        .min_by(|a, b| {
            let da = (aspect - f64::from(a.0) / f64::from(a.1)).abs();
            let db = (aspect - f64::from(b.0) / f64::from(b.1)).abs();
            da.total_cmp(&db).then(a.cmp(b))
        })
        .unwrap_or((1024, 1024));
    let scale = (area as f64 / REFERENCE_AREA as f64).sqrt();
    let side = |v: u32| {
        let scaled = if area == REFERENCE_AREA {
            f64::from(v)
        } else {
            f64::from(v) * scale
        };
        // `2 * int(v / 16)` latent patches of 8 pixels.
        ((scaled / 16.0).floor() as u32).max(1) * 16
    };
    (side(w), side(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_entries_map_to_themselves_at_the_reference_area() {
        for (w, h) in PREFERRED_RESOLUTIONS {
            assert_eq!(control_size(w, h, REFERENCE_AREA), (w, h));
        }
    }

    #[test]
    fn smaller_areas_scale_the_chosen_entry() {
        // 64² is 1/16 of the side: 1024 → 64, 1248×832 → 78×52 → 64×48.
        assert_eq!(control_size(500, 500, 64 * 64), (64, 64));
        assert_eq!(control_size(1248, 832, 64 * 64), (64, 48));
        // Never below one 16-pixel patch.
        assert_eq!(control_size(10, 1000, 16 * 16), (16, 16));
    }
}
