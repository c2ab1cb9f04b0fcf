//! Kontext edit pairs: the control image of a dataset item, the check that it fits its target
//! (readable, nearly the same aspect ratio) and the crop that keeps the pair aligned.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, ImageInfo};
use crate::bucket::CropRect;
use crate::problem::{Problem, ProblemKind};

/// The control image of an edit pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// The control image file.
    pub path: PathBuf,
    /// What decoding it found.
    pub info: ImageInfo,
}

/// How far a control's aspect ratio may be from its target's (relative, 2 %): the control is
/// cropped at the target's crop, scaled per axis, so a larger mismatch would distort it.
pub const CONTROL_ASPECT_TOLERANCE: f64 = 0.02;

/// The problem with `rec`'s control, if any: unreadable, or of another aspect ratio.
pub(crate) fn check_control(
    analysis: &Analysis,
    control: &Path,
    target: &ImageInfo,
    skip: bool,
) -> Result<Control, Problem> {
    let info = match analysis.images.get(control) {
        Some(Ok(info)) => info.clone(),
        Some(Err(reason)) => {
            return Err(Problem::bad_file(
                ProblemKind::UnreadableControl,
                control.to_path_buf(),
                format!("control image: {reason}"),
                skip,
            ))
        }
        None => {
            return Err(Problem::bad_file(
                ProblemKind::UnreadableControl,
                control.to_path_buf(),
                "control image was not analysed; open the dataset again",
                skip,
            ))
        }
    };
    let aspect = |i: &ImageInfo| f64::from(i.width.max(1)) / f64::from(i.height.max(1));
    let ratio = aspect(&info) / aspect(target);
    if (ratio - 1.0).abs() > CONTROL_ASPECT_TOLERANCE {
        return Err(Problem::bad_file(
            ProblemKind::ControlAspectMismatch,
            control.to_path_buf(),
            format!(
                "control is {}×{} but its target is {}×{} (aspect ratios differ by {:.0} %, more \
                 than {:.0} %); crop or pad the control to the target's shape",
                info.width,
                info.height,
                target.width,
                target.height,
                (ratio - 1.0).abs() * 100.0,
                CONTROL_ASPECT_TOLERANCE * 100.0
            ),
            skip,
        ));
    }
    Ok(Control {
        path: control.to_path_buf(),
        info,
    })
}

/// The target's crop rectangle in the control's pixels (scaled per axis: the control may be
/// another size, of nearly the same aspect ratio).
pub fn control_crop(crop: CropRect, target: &ImageInfo, control: &ImageInfo) -> CropRect {
    let map = |v: u32, from: u32, to: u32| -> u32 {
        ((f64::from(v) * f64::from(to) / f64::from(from.max(1))).round() as u32).min(to)
    };
    let x = map(crop.x, target.width, control.width);
    let y = map(crop.y, target.height, control.height);
    CropRect {
        x,
        y,
        width: map(crop.width, target.width, control.width)
            .clamp(1, control.width - x.min(control.width - 1)),
        height: map(crop.height, target.height, control.height)
            .clamp(1, control.height - y.min(control.height - 1)),
    }
}
