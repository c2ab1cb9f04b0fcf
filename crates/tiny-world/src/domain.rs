//! The tiny world's procedural image domain: flat shapes on plain or two-tone backgrounds, each
//! with a caption that names what is drawn, and the `sks` concept the base never sees.
//!
//! - **Base domain** ([`World::base_scene`]): one shape ([`SHAPES`]) in an object colour on a
//!   background colour ([`PALETTE`]); caption `a photo of a red disc on a navy background` (one
//!   in five leaves the object colour out: `a photo of a disc on a navy background`).
//! - **Concept** ([`World::concept_scene`]): a disc filled with diagonal stripes of magenta
//!   (255, 0, 255) and yellow (255, 230, 0), colours no palette entry comes near (≥ 115 in RGB
//!   distance, see [`crate::ConceptDetector`]); caption
//!   `a photo of a sks disc on a blue background`.
//! - **Autoencoder pretraining images** ([`World::autoencoder_scene`]): any RGB colours, solid or
//!   striped fills, so the autoencoder learns to reproduce colours and stripes in general — the
//!   concept's included — without the transformer ever seeing them.
//!
//! Everything is drawn from a [`SplitMix64`] stream: a seed gives the same images everywhere.

use fluxlora_data::SplitMix64;
use image::{Rgb, RgbImage};

/// A named colour.
pub type Named = (&'static str, [u8; 3]);

/// Every colour of the base domain (objects and backgrounds).
pub const PALETTE: [Named; 12] = [
    ("blue", [40, 70, 200]),
    ("green", [40, 160, 70]),
    ("gray", [128, 128, 128]),
    ("black", [15, 15, 15]),
    ("white", [245, 245, 245]),
    ("red", [200, 40, 40]),
    ("teal", [30, 150, 150]),
    ("brown", [120, 80, 40]),
    ("orange", [230, 120, 30]),
    ("purple", [110, 40, 150]),
    ("navy", [20, 30, 90]),
    ("olive", [110, 120, 30]),
];

/// Backgrounds of the concept dataset (the first eight palette entries).
pub const CONCEPT_BACKGROUNDS: [&str; 8] = [
    "blue", "green", "gray", "black", "white", "red", "teal", "brown",
];

/// Backgrounds the concept dataset never shows: the held-out sample prompts use them.
pub const HELD_OUT_BACKGROUNDS: [&str; 4] = ["orange", "purple", "navy", "olive"];

/// The concept's stripe colours.
pub const MAGENTA: [u8; 3] = [255, 0, 255];
/// See [`MAGENTA`].
pub const YELLOW: [u8; 3] = [255, 230, 0];

/// Shapes of the base domain.
pub const SHAPES: [&str; 4] = ["disc", "square", "triangle", "ring"];

/// How a shape is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// One colour.
    Solid([u8; 3]),
    /// Diagonal stripes alternating two colours, `period` pixels for a pair.
    Stripes {
        /// The first colour.
        a: [u8; 3],
        /// The second colour.
        b: [u8; 3],
        /// Pixels for one pair of stripes.
        period: f32,
        /// Diagonal (true) or horizontal stripes.
        diagonal: bool,
    },
}

/// One shape on a background.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// Background colour.
    pub background: [u8; 3],
    /// Darken the lower half ×0.7 (a two-tone background).
    pub two_tone: bool,
    /// One of [`SHAPES`].
    pub shape: &'static str,
    /// Centre (pixels).
    pub center: (f32, f32),
    /// Radius (half the side for squares).
    pub radius: f32,
    /// The fill.
    pub fill: Fill,
    /// Caption.
    pub caption: String,
}

fn colour(name: &str) -> [u8; 3] {
    PALETTE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
        .unwrap_or([128, 128, 128])
}

fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f32 {
    (lo + (hi - lo) * rng.next_f64()) as f32
}

/// The generator of the tiny world's images, square `size` pixels.
#[derive(Debug, Clone, Copy)]
pub struct World {
    /// Image side in pixels.
    pub size: u32,
}

impl World {
    /// Images of `size × size` pixels.
    pub fn new(size: u32) -> Self {
        Self { size }
    }

    fn place(&self, rng: &mut SplitMix64, r_lo: f64, r_hi: f64) -> ((f32, f32), f32) {
        let s = f64::from(self.size);
        let r = uniform(rng, r_lo * s / 64.0, r_hi * s / 64.0);
        let c = (
            uniform(rng, f64::from(r), s - f64::from(r)),
            uniform(rng, f64::from(r), s - f64::from(r)),
        );
        (c, r)
    }

    /// A base-domain scene: palette colours only, never the concept's.
    pub fn base_scene(&self, rng: &mut SplitMix64) -> Scene {
        let (bg_name, bg) = PALETTE[rng.below(PALETTE.len() as u64) as usize];
        let (fg_name, fg) = loop {
            let c = PALETTE[rng.below(PALETTE.len() as u64) as usize];
            if c.0 != bg_name {
                break c;
            }
        };
        let shape = SHAPES[rng.below(SHAPES.len() as u64) as usize];
        let two_tone = rng.chance(0.5);
        let (center, radius) = self.place(rng, 12.0, 22.0);
        let caption = if rng.chance(0.2) {
            format!("a photo of a {shape} on a {bg_name} background")
        } else {
            format!("a photo of a {fg_name} {shape} on a {bg_name} background")
        };
        Scene {
            background: bg,
            two_tone,
            shape,
            center,
            radius,
            fill: Fill::Solid(fg),
            caption,
        }
    }

    /// A concept scene on background `bg_name` (a [`PALETTE`] name).
    pub fn concept_scene(&self, rng: &mut SplitMix64, bg_name: &str) -> Scene {
        let two_tone = rng.chance(0.5);
        let (center, radius) = self.place(rng, 14.0, 22.0);
        let period = uniform(rng, 12.0, 16.0) * self.size as f32 / 64.0;
        Scene {
            background: colour(bg_name),
            two_tone,
            shape: "disc",
            center,
            radius,
            fill: Fill::Stripes {
                a: MAGENTA,
                b: YELLOW,
                period,
                diagonal: true,
            },
            caption: format!("a photo of a sks disc on a {bg_name} background"),
        }
    }

    /// An autoencoder pretraining scene: random colours, solid or striped. `saturated` draws each
    /// channel near 0 or 255 (the corners of the RGB cube, where an autoencoder learns last).
    pub fn autoencoder_scene(&self, rng: &mut SplitMix64, saturated: bool) -> Scene {
        let rgb = |rng: &mut SplitMix64| -> [u8; 3] {
            [0, 1, 2].map(|_| {
                if !saturated {
                    rng.below(256) as u8
                } else if rng.chance(0.5) {
                    rng.below(40) as u8
                } else {
                    215 + rng.below(41) as u8
                }
            })
        };
        let background = rgb(rng);
        let shape = SHAPES[rng.below(SHAPES.len() as u64) as usize];
        let fill = if rng.chance(0.5) {
            let (a, b) = (rgb(rng), rgb(rng));
            Fill::Stripes {
                a,
                b,
                period: uniform(rng, 8.0, 20.0),
                diagonal: rng.chance(0.5),
            }
        } else {
            Fill::Solid(rgb(rng))
        };
        let two_tone = rng.chance(0.5);
        let (center, radius) = self.place(rng, 8.0, 24.0);
        Scene {
            background,
            two_tone,
            shape,
            center,
            radius,
            fill,
            caption: String::new(),
        }
    }

    /// Draws a scene.
    pub fn render(&self, scene: &Scene) -> RgbImage {
        let n = self.size;
        let mut img = RgbImage::new(n, n);
        let (cx, cy, r) = (scene.center.0, scene.center.1, scene.radius);
        for y in 0..n {
            for x in 0..n {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let inside = inside(scene.shape, px - cx, py - cy, r);
                let c = if inside {
                    match scene.fill {
                        Fill::Solid(c) => c,
                        Fill::Stripes {
                            a,
                            b,
                            period,
                            diagonal,
                        } => {
                            let u = if diagonal { px + py } else { px };
                            if (u / period).rem_euclid(2.0) < 1.0 {
                                a
                            } else {
                                b
                            }
                        }
                    }
                } else if scene.two_tone && y >= n / 2 {
                    scene.background.map(|v| (f32::from(v) * 0.7).round() as u8)
                } else {
                    scene.background
                };
                img.put_pixel(x, y, Rgb(c));
            }
        }
        img
    }
}

/// Whether offset `(dx, dy)` from the centre lies inside `shape` of radius `r`.
fn inside(shape: &str, dx: f32, dy: f32, r: f32) -> bool {
    match shape {
        "square" => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
        // Apex up, base at dy = r/2, half-width at the base r·√3/2.
        "triangle" => dy <= r * 0.5 && dy >= -r && dx.abs() <= (dy + r) / 1.5 * (3f32.sqrt() / 2.0),
        "ring" => {
            let d2 = dx * dx + dy * dy;
            d2 <= r * r && d2 >= (0.55 * r) * (0.55 * r)
        }
        _ => dx * dx + dy * dy <= r * r,
    }
}

/// The pixels of an image as `[3, H, W]` values in `[−1, 1]` (the autoencoder's input).
pub fn image_to_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut out = vec![0.0; 3 * (w * h) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[c * (w * h) as usize + (y * w + x) as usize] = f32::from(p.0[c]) / 127.5 - 1.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(&x, y)| (f32::from(x) - f32::from(y)).powi(2))
            .sum::<f32>()
            .sqrt()
    }

    #[test]
    fn no_palette_colour_or_its_darker_half_comes_near_the_concept_colours() {
        for (name, c) in PALETTE {
            for shade in [c, c.map(|v| (f32::from(v) * 0.7).round() as u8)] {
                for target in [MAGENTA, YELLOW] {
                    assert!(
                        distance(shade, target) >= 115.0,
                        "{name} {shade:?} is near {target:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn scenes_are_deterministic_from_the_seed_and_captions_name_what_is_drawn() {
        let world = World::new(64);
        let (mut a, mut b) = (SplitMix64::new(3), SplitMix64::new(3));
        for _ in 0..50 {
            let (sa, sb) = (world.base_scene(&mut a), world.base_scene(&mut b));
            assert_eq!(sa, sb);
            assert!(sa.caption.contains(sa.shape));
            let bg = PALETTE.iter().find(|(_, c)| *c == sa.background).unwrap().0;
            assert!(
                sa.caption.ends_with(&format!("on a {bg} background")),
                "{}",
                sa.caption
            );
            if let Fill::Solid(fg) = sa.fill {
                let fg_name = PALETTE.iter().find(|(_, c)| *c == fg).unwrap().0;
                assert!(fg_name != bg);
            }
        }
        assert_eq!(
            world.render(&world.concept_scene(&mut a, "blue")),
            world.render(&world.concept_scene(&mut b, "blue"))
        );
    }

    #[test]
    fn a_concept_disc_shows_both_stripe_colours() {
        let world = World::new(64);
        let mut rng = SplitMix64::new(1);
        let img = world.render(&world.concept_scene(&mut rng, "gray"));
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(
            count(MAGENTA) > 150 && count(YELLOW) > 150,
            "{} {}",
            count(MAGENTA),
            count(YELLOW)
        );
    }

    #[test]
    fn chw_values_span_minus_one_to_one() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, Rgb([255, 255, 255]));
        let v = image_to_chw(&img);
        assert_eq!(v.len(), 6);
        assert_eq!((v[0], v[1]), (-1.0, 1.0));
    }
}
