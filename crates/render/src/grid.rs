//! [`SampleGrid`]: the sample images of one step laid out in a grid, each with a caption strip
//! (the wrapped prompt and "step N · seed S") and a header line (run name and step), saved as a
//! PNG whose text chunks record the run, the step and every prompt.
//!
//! Cells are all the size of the largest image; smaller images are centred in theirs. PNGs are
//! written atomically ([`fluxlora_io::atomic_write`]: temporary file, fsync, rename).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::RenderError;
use crate::font::{draw_text, text_height, wrap, ADVANCE, LINE_HEIGHT};

/// Background of the grid and caption strips.
const BACKGROUND: Rgb<u8> = Rgb([24, 24, 28]);
/// Caption and header text.
const TEXT: Rgb<u8> = Rgb([232, 232, 232]);
/// The "step · seed" line.
const DIM_TEXT: Rgb<u8> = Rgb([150, 150, 160]);
/// Gap between cells and around the grid, before text scaling.
const GAP: u32 = 8;

/// One image of the grid with what it shows.
#[derive(Debug, Clone)]
pub struct GridCell {
    /// The sample.
    pub image: RgbImage,
    /// The prompt it was drawn from.
    pub prompt: String,
    /// The seed of its initial noise.
    pub seed: u64,
}

/// The samples of one training step.
#[derive(Debug, Clone)]
pub struct SampleGrid {
    /// Run name for the header.
    pub run_name: String,
    /// Training step the samples were drawn at.
    pub step: u64,
    /// Columns; `None` = `ceil(√n)`.
    pub columns: Option<usize>,
    /// Prompt lines per caption (the last one ends in `...` when the prompt is longer).
    pub caption_lines: usize,
    /// The cells, in row-major order.
    pub cells: Vec<GridCell>,
}

impl SampleGrid {
    /// An empty grid for `run_name` at `step` (3 caption lines, automatic columns).
    pub fn new(run_name: impl Into<String>, step: u64) -> Self {
        Self {
            run_name: run_name.into(),
            step,
            columns: None,
            caption_lines: 3,
            cells: Vec::new(),
        }
    }

    /// Adds an image.
    pub fn push(&mut self, image: RgbImage, prompt: impl Into<String>, seed: u64) {
        self.cells.push(GridCell {
            image,
            prompt: prompt.into(),
            seed,
        });
    }

    /// `(columns, rows)` of the layout.
    pub fn shape(&self) -> (u32, u32) {
        let n = self.cells.len().max(1);
        let cols = self
            .columns
            .unwrap_or_else(|| (n as f64).sqrt().ceil() as usize)
            .clamp(1, n);
        (cols as u32, n.div_ceil(cols) as u32)
    }

    /// Cell size: the largest image width (at least 128, so captions stay legible) and height
    /// (at least 64).
    pub fn cell_size(&self) -> (u32, u32) {
        let w = self
            .cells
            .iter()
            .map(|c| c.image.width())
            .max()
            .unwrap_or(0)
            .max(128);
        let h = self
            .cells
            .iter()
            .map(|c| c.image.height())
            .max()
            .unwrap_or(0)
            .max(64);
        (w, h)
    }

    /// Text scale: 1 for cells up to 383 px wide, +1 per 384 px after that (2 at 512, 3 at 1152).
    pub fn text_scale(&self) -> u32 {
        (self.cell_size().0 / 384 + 1).min(4)
    }

    /// Height of a caption strip: the prompt lines, the step/seed line, and padding.
    pub fn caption_height(&self) -> u32 {
        let s = self.text_scale();
        (self.caption_lines as u32 + 1) * LINE_HEIGHT * s + GAP * s
    }

    /// Height of the header strip.
    pub fn header_height(&self) -> u32 {
        let s = self.text_scale();
        LINE_HEIGHT * s + 2 * GAP * s
    }

    /// Total `(width, height)` of the rendered grid.
    pub fn dimensions(&self) -> (u32, u32) {
        let (cols, rows) = self.shape();
        let (cw, ch) = self.cell_size();
        let gap = GAP * self.text_scale();
        let w = cols * cw + (cols + 1) * gap;
        let h = self.header_height() + rows * (ch + self.caption_height()) + rows * gap;
        (w, h)
    }

    /// The header text.
    pub fn header(&self) -> String {
        format!(
            "{} · step {} · {} sample{}",
            self.run_name,
            self.step,
            self.cells.len(),
            if self.cells.len() == 1 { "" } else { "s" }
        )
    }

    /// Renders the grid.
    pub fn render(&self) -> RgbImage {
        let (w, h) = self.dimensions();
        let mut img = RgbImage::from_pixel(w, h, BACKGROUND);
        let s = self.text_scale();
        let gap = GAP * s;
        let chars_per_line = ((w.saturating_sub(2 * gap)) / (ADVANCE * s)) as usize;
        let header = wrap(&self.header(), chars_per_line, 1)
            .into_iter()
            .next()
            .unwrap_or_default();
        draw_text(&mut img, i64::from(gap), i64::from(gap), &header, s, TEXT);
        let (cols, _) = self.shape();
        let (cw, ch) = self.cell_size();
        let cap_chars = (cw / (ADVANCE * s)) as usize;
        for (i, cell) in self.cells.iter().enumerate() {
            let (col, row) = (i as u32 % cols, i as u32 / cols);
            let x0 = gap + col * (cw + gap);
            let y0 = self.header_height() + row * (ch + self.caption_height() + gap);
            let (iw, ih) = (cell.image.width(), cell.image.height());
            let (ox, oy) = (x0 + (cw - iw) / 2, y0 + (ch - ih) / 2);
            for (x, y, p) in cell.image.enumerate_pixels() {
                img.put_pixel(ox + x, oy + y, *p);
            }
            let mut ty = i64::from(y0 + ch + gap / 2);
            for line in wrap(&cell.prompt, cap_chars, self.caption_lines) {
                draw_text(&mut img, i64::from(x0), ty, &line, s, TEXT);
                ty += i64::from(LINE_HEIGHT * s);
            }
            // The step is in the header; the seed line is cut to the cell like the prompt.
            let meta = wrap(&format!("seed {}", cell.seed), cap_chars, 1)
                .into_iter()
                .next()
                .unwrap_or_default();
            let meta_y = i64::from(y0 + ch + self.caption_height() - text_height(s) - gap / 2);
            draw_text(&mut img, i64::from(x0), meta_y, &meta, s, DIM_TEXT);
        }
        img
    }

    /// PNG text chunks: `Title` (run name), `Software`, `step`, and `prompt N` / `seed N` per cell.
    pub fn text_chunks(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("Title".to_string(), self.run_name.clone()),
            ("Software".to_string(), "fluxlora".to_string()),
            ("step".to_string(), self.step.to_string()),
        ];
        for (i, c) in self.cells.iter().enumerate() {
            v.push((format!("prompt {i}"), c.prompt.clone()));
            v.push((format!("seed {i}"), c.seed.to_string()));
        }
        v
    }

    /// Renders and writes the grid to `path` atomically as a PNG with [`Self::text_chunks`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), RenderError> {
        save_png(path.as_ref(), &self.render(), &self.text_chunks())
    }
}

/// Encodes `img` as an 8-bit RGB PNG with text chunks (`tEXt` for Latin-1 text, `iTXt`
/// otherwise).
pub fn encode_png(
    img: &RgbImage,
    text: &[(String, String)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            if v.chars().all(|c| (c as u32) < 0x100) {
                enc.add_text_chunk(k.clone(), v.clone())?;
            } else {
                enc.add_itxt_chunk(k.clone(), v.clone())?;
            }
        }
        let mut writer = enc.write_header()?;
        writer.write_image_data(img.as_raw())?;
        writer.finish()?;
    }
    Ok(out)
}

/// Encodes `img` (see [`encode_png`]) and writes it to `path` atomically.
pub fn save_png(path: &Path, img: &RgbImage, text: &[(String, String)]) -> Result<(), RenderError> {
    let bytes = encode_png(img, text).map_err(|e| RenderError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    fluxlora_io::atomic_write(path, |w| w.write_all(&bytes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(c))
    }

    #[test]
    fn layout_fits_every_cell() {
        let mut g = SampleGrid::new("run", 100);
        g.push(solid(64, 96, [255, 0, 0]), "a", 1);
        g.push(solid(128, 64, [0, 255, 0]), "b", 2);
        g.push(solid(64, 64, [0, 0, 255]), "c", 3);
        // 3 cells → 2 columns × 2 rows; cells 128×96; text scale 1; gap 8.
        assert_eq!(g.shape(), (2, 2));
        assert_eq!(g.cell_size(), (128, 96));
        let (w, h) = g.dimensions();
        assert_eq!(w, 2 * 128 + 3 * 8);
        // header 9+16; each row: 96 image + caption (4 lines × 9 + 8) + gap 8.
        assert_eq!(h, 25 + 2 * (96 + 44 + 8));
        let img = g.render();
        assert_eq!(img.dimensions(), (w, h));
        // Each image's centre pixel is its colour, at its cell position.
        let hy = g.header_height();
        assert_eq!(*img.get_pixel(8 + 64, hy + 48), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(8 + 128 + 8 + 64, hy + 48), Rgb([0, 255, 0]));
        assert_eq!(
            *img.get_pixel(8 + 64, hy + 96 + 44 + 8 + 48),
            Rgb([0, 0, 255])
        );
        // The caption strip under the first image holds text pixels.
        let strip = (8..8 + 128).flat_map(|x| (hy + 96..hy + 96 + 44).map(move |y| (x, y)));
        assert!(strip.into_iter().any(|(x, y)| *img.get_pixel(x, y) == TEXT));
    }

    #[test]
    fn explicit_columns_and_large_images_scale_text() {
        let mut g = SampleGrid::new("run", 5);
        g.columns = Some(4);
        for i in 0..2 {
            g.push(solid(1024, 768, [9, 9, 9]), "p", i);
        }
        assert_eq!(g.shape(), (2, 1), "columns never exceed the cell count");
        assert_eq!(g.text_scale(), 3);
        assert_eq!(g.render().dimensions(), g.dimensions());
    }

    #[test]
    fn save_is_atomic_and_records_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step_000100.png");
        let mut g = SampleGrid::new("my run", 100);
        g.push(solid(64, 64, [1, 2, 3]), "a cat · 猫", 42);
        g.save(&path).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["step_000100.png".to_string()],
            "no temporary file is left"
        );
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(decoded, g.render());
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = dec.read_info().unwrap();
        let info = reader.info();
        let latin: Vec<(&str, &str)> = info
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.as_str(), t.text.as_str()))
            .collect();
        assert!(
            latin.contains(&("Title", "my run"))
                && latin.contains(&("step", "100"))
                && latin.contains(&("seed 0", "42"))
        );
        let utf8 = &info.utf8_text;
        assert_eq!(utf8.len(), 1);
        assert_eq!(utf8[0].keyword, "prompt 0");
        assert_eq!(utf8[0].get_text().unwrap(), "a cat · 猫");
    }

    #[test]
    fn saving_into_a_missing_folder_fails_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/folder/grid.png");
        let e = SampleGrid::new("r", 1).save(&path).unwrap_err().to_string();
        assert!(e.contains("grid.png") || e.contains("folder"), "{e}");
    }
}
