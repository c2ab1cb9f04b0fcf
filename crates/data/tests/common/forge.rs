//! Hand-built image files for the hostile-input tests: small files whose headers declare huge
//! images (decompression bombs), animated PNG and WebP, and header edits of valid files. Every
//! file is made in the test, byte by byte; nothing large is stored or allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat};

/// The 8-byte PNG signature.
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];

/// CRC-32 (ISO-HDLC, as PNG uses), bit by bit.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// One PNG chunk: length, type, data, CRC over type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut typed = kind.to_vec();
    typed.extend_from_slice(data);
    out.extend_from_slice(&crc32(&typed).to_be_bytes());
    out
}

/// The chunks of a PNG file (type, data), CRCs not checked.
pub fn png_chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 8;
    while i + 12 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = png[i + 4..i + 8].try_into().unwrap();
        out.push((kind, png[i + 8..i + 8 + len].to_vec()));
        i += 12 + len;
    }
    out
}

/// A zlib stream of one stored deflate block holding `n` zero bytes.
fn zlib_zeros(n: u16) -> Vec<u8> {
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(!n).to_le_bytes());
    out.extend(std::iter::repeat_n(0u8, n as usize));
    // Adler-32 of n zeros: a = 1, b = n.
    out.extend_from_slice(&((u32::from(n) << 16) | 1).to_be_bytes());
    out
}

/// A ~170-byte valid-looking PNG whose IHDR declares `w`×`h` 8-bit RGB pixels (correct CRCs,
/// a tiny IDAT, IEND): decoding it naively allocates `w·h·3` bytes.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = PNG_SIGNATURE.to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(b"IDAT", &zlib_zeros(100)));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Overwrites the IHDR width and height of an encoded PNG and fixes the chunk's CRC.
pub fn set_png_dims(png: &mut [u8], w: u32, h: u32) {
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
}

/// `fcTL` data: a full-canvas frame shown for 1/10 s.
fn fctl(seq: u32, w: u32, h: u32) -> Vec<u8> {
    let mut d = Vec::new();
    for v in [seq, w, h, 0, 0] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&10u16.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d
}

/// An animated PNG (APNG) of same-sized frames; the first is also the default image.
pub fn apng(frames: &[DynamicImage]) -> Vec<u8> {
    let (w, h) = (frames[0].width(), frames[0].height());
    let encoded: Vec<Vec<([u8; 4], Vec<u8>)>> = frames
        .iter()
        .map(|f| png_chunks(&encode(f, ImageFormat::Png)))
        .collect();
    let idat = |chunks: &[([u8; 4], Vec<u8>)]| -> Vec<u8> {
        chunks
            .iter()
            .filter(|(k, _)| k == b"IDAT")
            .flat_map(|(_, d)| d.clone())
            .collect()
    };
    let mut out = PNG_SIGNATURE.to_vec();
    out.extend(png_chunk(b"IHDR", &encoded[0][0].1));
    let mut actl = (frames.len() as u32).to_be_bytes().to_vec();
    actl.extend_from_slice(&0u32.to_be_bytes());
    out.extend(png_chunk(b"acTL", &actl));
    let mut seq = 0;
    out.extend(png_chunk(b"fcTL", &fctl(seq, w, h)));
    out.extend(png_chunk(b"IDAT", &idat(&encoded[0])));
    for chunks in &encoded[1..] {
        seq += 1;
        out.extend(png_chunk(b"fcTL", &fctl(seq, w, h)));
        seq += 1;
        let mut fdat = seq.to_be_bytes().to_vec();
        fdat.extend(idat(chunks));
        out.extend(png_chunk(b"fdAT", &fdat));
    }
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Encodes an image in `format`.
pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, format).expect("encoding a test image");
    c.into_inner()
}

/// A RIFF/WEBP file of `chunks` (each padded to an even length).
pub fn riff_webp(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut body = b"WEBP".to_vec();
    for (kind, data) in chunks {
        body.extend_from_slice(kind);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// The chunks of a RIFF/WEBP file (type, unpadded data).
pub fn webp_chunks(webp: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 12;
    while i + 8 <= webp.len() {
        let kind: [u8; 4] = webp[i..i + 4].try_into().unwrap();
        let len = u32::from_le_bytes(webp[i + 4..i + 8].try_into().unwrap()) as usize;
        out.push((kind, webp[i + 8..i + 8 + len].to_vec()));
        i += 8 + len + len % 2;
    }
    out
}

/// The `VP8L` chunk data of a lossless WebP encoding of `img`.
pub fn vp8l(img: &DynamicImage) -> Vec<u8> {
    let chunks = webp_chunks(&encode(img, ImageFormat::WebP));
    let (_, data) = chunks
        .iter()
        .find(|(k, _)| k == b"VP8L")
        .expect("a VP8L chunk");
    data.clone()
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// `VP8X` data: feature `flags`, canvas `w`×`h`.
fn vp8x(flags: u8, w: u32, h: u32) -> Vec<u8> {
    let mut d = vec![flags, 0, 0, 0];
    d.extend_from_slice(&u24(w - 1));
    d.extend_from_slice(&u24(h - 1));
    d
}

/// An animated WebP: a `w`×`h` canvas and one full-size lossless frame per image.
pub fn animated_webp(w: u32, h: u32, frames: &[DynamicImage]) -> Vec<u8> {
    let mut chunks = vec![
        (*b"VP8X", vp8x(0x02, w, h)),
        (*b"ANIM", vec![255, 255, 255, 255, 0, 0]),
    ];
    for f in frames {
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(f.width() - 1));
        anmf.extend_from_slice(&u24(f.height() - 1));
        anmf.extend_from_slice(&u24(100));
        anmf.push(0x02);
        let data = vp8l(f);
        anmf.extend_from_slice(b"VP8L");
        anmf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        anmf.extend_from_slice(&data);
        if data.len() % 2 == 1 {
            anmf.push(0);
        }
        chunks.push((*b"ANMF", anmf));
    }
    riff_webp(&chunks)
}

/// A WebP whose `VP8X` canvas is `w`×`h`, with a small still `VP8L` image inside.
pub fn webp_vp8x_bomb(w: u32, h: u32, inner: &DynamicImage) -> Vec<u8> {
    riff_webp(&[(*b"VP8X", vp8x(0, w, h)), (*b"VP8L", vp8l(inner))])
}

/// Overwrites the 14-bit width and height of a simple lossless WebP (`RIFF…WEBPVP8L`).
pub fn set_vp8l_dims(webp: &mut [u8], w: u32, h: u32) {
    assert_eq!(&webp[12..16], b"VP8L");
    let old = u32::from_le_bytes(webp[21..25].try_into().unwrap());
    let bits = ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14) | (old & 0xF000_0000);
    webp[21..25].copy_from_slice(&bits.to_le_bytes());
}

/// The first 13 bytes of a GIF (header and logical screen) declaring `w`×`h`, then a trailer.
pub fn gif_header(w: u16, h: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0x3B]);
    out
}

/// Overwrites the frame size in a JPEG's first SOFn segment; false when there is none.
pub fn set_jpeg_dims(jpeg: &mut [u8], w: u16, h: u16) -> bool {
    let mut i = 2;
    while i + 9 < jpeg.len() {
        if jpeg[i] != 0xFF {
            return false;
        }
        let m = jpeg[i + 1];
        if matches!(m, 0xC0..=0xC3) {
            jpeg[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
            jpeg[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
            return true;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        i += 2 + len;
    }
    false
}

/// Overwrites the width and height of a BMP's info header.
pub fn set_bmp_dims(bmp: &mut [u8], w: i32, h: i32) {
    bmp[18..22].copy_from_slice(&w.to_le_bytes());
    bmp[22..26].copy_from_slice(&h.to_le_bytes());
}
