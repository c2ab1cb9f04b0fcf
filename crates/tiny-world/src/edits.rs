//! The tiny world's edit task (FLUX.1 Kontext): pairs of scenes, a control and its edited
//! target, with the edit instruction as the caption.
//!
//! - **Base edits** ([`World::base_edit`]), what the tiny Kontext base learns: recolour the
//!   background (`make the background navy`), change the shape (`turn the disc into a
//!   square`), recolour the object (`make the ring white`). Palette colours only.
//! - **Concept edit** ([`World::concept_edit`]), the LoRA's and never in the base's data:
//!   `paint sks stripes on the disc`. The control is a solid disc; the target is the same scene
//!   with the disc filled with the concept's magenta and yellow stripes, in place.
//! - [`object_region`]: the pixels of a control's object (everything that is not its
//!   background), where the concept is looked for when scoring.

use fluxlora_data::SplitMix64;
use image::RgbImage;

use crate::domain::{Fill, Scene, World, MAGENTA, PALETTE, SHAPES, YELLOW};

/// A control scene, its edited target and the instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct EditPair {
    /// The scene before the edit (the control image).
    pub control: Scene,
    /// The scene after it (the training target).
    pub target: Scene,
    /// The instruction, the pair's caption.
    pub instruction: String,
}

/// The instruction of the concept edit.
pub const CONCEPT_INSTRUCTION: &str = "paint sks stripes on the disc";

fn name_of(c: [u8; 3]) -> &'static str {
    PALETTE
        .iter()
        .find(|(_, v)| *v == c)
        .map_or("gray", |(n, _)| n)
}

/// A palette colour other than those in `avoid`.
fn other_colour(rng: &mut SplitMix64, avoid: &[[u8; 3]]) -> [u8; 3] {
    loop {
        let (_, c) = PALETTE[rng.below(PALETTE.len() as u64) as usize];
        if !avoid.contains(&c) {
            return c;
        }
    }
}

impl World {
    /// A base edit of a base-domain scene (one of three kinds, uniformly).
    pub fn base_edit(&self, rng: &mut SplitMix64) -> EditPair {
        let control = self.base_scene(rng);
        let Fill::Solid(fg) = control.fill else {
            unreachable!("base scenes are solid")
        };
        let mut target = control.clone();
        let instruction = match rng.below(3) {
            0 => {
                target.background = other_colour(rng, &[control.background, fg]);
                format!("make the background {}", name_of(target.background))
            }
            1 => {
                let shape = loop {
                    let s = SHAPES[rng.below(SHAPES.len() as u64) as usize];
                    if s != control.shape {
                        break s;
                    }
                };
                target.shape = shape;
                format!("turn the {} into a {shape}", control.shape)
            }
            _ => {
                let c = other_colour(rng, &[control.background, fg]);
                target.fill = Fill::Solid(c);
                format!("make the {} {}", control.shape, name_of(c))
            }
        };
        target.caption = instruction.clone();
        EditPair {
            control,
            target,
            instruction,
        }
    }

    /// The concept edit of a solid disc on background `bg_name` (a [`PALETTE`] name).
    pub fn concept_edit(&self, rng: &mut SplitMix64, bg_name: &str) -> EditPair {
        let striped = self.concept_scene(rng, bg_name);
        let fg = other_colour(rng, &[striped.background]);
        let control = Scene {
            fill: Fill::Solid(fg),
            caption: String::new(),
            ..striped.clone()
        };
        EditPair {
            control,
            target: Scene {
                caption: CONCEPT_INSTRUCTION.into(),
                ..striped
            },
            instruction: CONCEPT_INSTRUCTION.into(),
        }
    }
}

/// The pixels of a rendered control that are its object: neither its background colour (the
/// corner pixel, which no object reaches) nor that colour's darker two-tone shade.
pub fn object_region(control: &RgbImage) -> Vec<bool> {
    let bg = control.get_pixel(0, 0).0;
    let dark = bg.map(|v| (f32::from(v) * 0.7).round() as u8);
    control.pixels().map(|p| p.0 != bg && p.0 != dark).collect()
}

/// Whether a colour is one of the concept's (for tests of the pairs).
pub fn is_concept_colour(c: [u8; 3]) -> bool {
    c == MAGENTA || c == YELLOW
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HELD_OUT_BACKGROUNDS;

    #[test]
    fn base_edits_change_one_thing_and_say_which() {
        let world = World::new(64);
        let mut rng = SplitMix64::new(4);
        let mut kinds = [0usize; 3];
        for _ in 0..60 {
            let e = world.base_edit(&mut rng);
            let (c, t) = (&e.control, &e.target);
            assert_eq!(
                (c.center, c.radius, c.two_tone),
                (t.center, t.radius, t.two_tone)
            );
            let changed = [
                c.background != t.background,
                c.shape != t.shape,
                c.fill != t.fill,
            ];
            assert_eq!(changed.iter().filter(|&&x| x).count(), 1, "{e:?}");
            let k = changed.iter().position(|&x| x).unwrap();
            kinds[k] += 1;
            match k {
                0 => assert!(e.instruction.ends_with(name_of(t.background))),
                1 => assert!(e.instruction.ends_with(t.shape)),
                _ => assert!(e.instruction.starts_with(&format!("make the {}", c.shape))),
            }
            assert_eq!(t.caption, e.instruction);
            let img = world.render(t);
            assert!(img.pixels().all(|p| !is_concept_colour(p.0)));
        }
        assert!(kinds.iter().all(|&n| n > 10), "{kinds:?}");
    }

    #[test]
    fn the_concept_edit_stripes_the_disc_in_place_and_the_region_finds_it() {
        let world = World::new(64);
        let mut rng = SplitMix64::new(8);
        for bg in HELD_OUT_BACKGROUNDS {
            let e = world.concept_edit(&mut rng, bg);
            let (control, target) = (world.render(&e.control), world.render(&e.target));
            assert!(control.pixels().all(|p| !is_concept_colour(p.0)));
            let region = object_region(&control);
            let inside = region.iter().filter(|&&r| r).count();
            assert!(inside > 300, "{inside}");
            // Every concept-coloured pixel of the target lies on the control's disc.
            for (p, &r) in target.pixels().zip(&region) {
                assert_eq!(is_concept_colour(p.0), r, "{bg}");
            }
        }
    }
}
