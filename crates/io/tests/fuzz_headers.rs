//! Hostile safetensors headers: the length prefix overwritten with edge values, JSON tokens of a
//! valid header replaced by huge, negative or fractional numbers and odd dtypes, generated
//! headers with adversarial shapes and offsets, and random bytes behind a correct prefix. Both
//! [`SafeTensorsFile::open`] and the header parser must answer Ok or Err — never panic — and
//! agree with each other; whatever opens must read back.

use crate::common;

use std::path::Path;

use common::{build, f32_raw, serialize_reference};
use fluxlora_io::safetensors::header;
use fluxlora_io::SafeTensorsFile;
use proptest::prelude::*;

/// A valid file: `w` F32 [2,3], `b` BF16 [4], metadata.
fn valid_bytes() -> Vec<u8> {
    let b = common::Raw {
        dtype: safetensors::Dtype::BF16,
        shape: vec![4],
        bytes: vec![0x80, 0x3F, 0, 0x40, 0, 0xC0, 0, 0],
    };
    let tensors = vec![
        ("w".to_string(), f32_raw(&[2, 3], &[1., 2., 3., 4., 5., 6.])),
        ("b".to_string(), b),
    ];
    serialize_reference(
        &tensors,
        Some([("format".to_string(), "pt".to_string())].into()),
    )
}

/// Splits a valid file into its header text and data section.
fn split(bytes: &[u8]) -> (String, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    (text, bytes[8 + n..].to_vec())
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "24",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e308",
    "2.5",
    "-0",
];

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F4", "F17", "", "f32",
];

/// Replaces number (or dtype string) `which` (modulo their count) of the header text.
fn replace_token(text: &str, which: usize, with: &str, numbers: bool) -> String {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if numbers && bytes[i].is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            spans.push(start..i);
        } else if !numbers && text[i..].starts_with("\"dtype\":\"") {
            let s = i + 9;
            let e = text[s..].find('"').map_or(text.len(), |k| s + k);
            spans.push(s..e);
            i = e;
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return text.to_string();
    }
    let span = spans[which % spans.len()].clone();
    format!("{}{}{}", &text[..span.start], with, &text[span.end..])
}

/// Opens `bytes` as a file and parses them in memory; both must agree, never panic.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let opened = SafeTensorsFile::open(&p);
    let parsed = header::parse(Path::new("fuzz.safetensors"), bytes);
    match &opened {
        Ok(f) => {
            prop_assert!(
                parsed.is_ok(),
                "opened but the parser refused: {:?}",
                parsed.err()
            );
            for name in f.names() {
                let raw = f.raw(name).unwrap();
                let (_, shape) = f.info(name).unwrap();
                let numel: usize = shape.iter().product();
                prop_assert!(raw.len() >= numel || numel == 0);
                let _ = f.read_f32(name);
            }
        }
        Err(e) => {
            prop_assert!(parsed.is_err(), "parser accepted what open refused: {e}");
            prop_assert!(e.to_string().contains("fuzz.safetensors"), "{e}");
        }
    }
    Ok(())
}

fn entry() -> impl Strategy<Value = String> {
    let num = || prop::sample::select(NUMBERS);
    (
        prop::sample::select(&["w", "b", "__metadata__", "x"][..]),
        prop::sample::select(DTYPES),
        prop::collection::vec(num(), 0..4),
        (num(), num()),
    )
        .prop_map(|(name, dtype, shape, (a, b))| {
            format!(
                r#""{name}":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{a},{b}]}}"#,
                shape.join(",")
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The 8-byte length prefix set to edge values, with the rest of a valid file.
    #[test]
    fn length_prefix_edges_never_panic(
        pick in prop::sample::select(vec![0u64, 1, 2, 7, 8, 1 << 40, 100_000_000, 100_000_001,
                                          u64::MAX, u64::MAX - 7]),
        near in -3i64..=3,
        use_near in any::<bool>(),
    ) {
        let mut bytes = valid_bytes();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let len = if use_near { n.saturating_add_signed(near) } else { pick };
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        check(&bytes)?;
        check(&bytes[..bytes.len().min(8 + (len as usize).min(64))])?;
    }

    /// One number or dtype of a valid header replaced; the prefix kept correct.
    #[test]
    fn header_token_edits_never_panic(
        which in any::<usize>(),
        number in prop::sample::select(NUMBERS),
        dtype in prop::sample::select(DTYPES),
        numbers in any::<bool>(),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (text, mut data) = split(&valid_bytes());
        let with = if numbers { number } else { dtype };
        let text = replace_token(&text, which, with, numbers);
        if let Some(c) = cut {
            data.truncate(c.index(data.len() + 1));
        }
        check(&build(&text, &data))?;
    }

    /// Generated headers with adversarial shapes and offsets, or random bytes, behind a
    /// correct prefix.
    #[test]
    fn generated_headers_never_panic(
        entries in prop::collection::vec(entry(), 0..4),
        data_len in 0usize..64,
        garbage in prop::collection::vec(any::<u8>(), 0..128),
        use_garbage in any::<bool>(),
    ) {
        let bytes = if use_garbage {
            let mut b = (garbage.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&garbage);
            b
        } else {
            build(&format!("{{{}}}", entries.join(",")), &vec![0u8; data_len])
        };
        check(&bytes)?;
    }
}

#[test]
fn the_base_file_opens_and_token_edits_hit_the_header() {
    let bytes = valid_bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(SafeTensorsFile::open(&p).unwrap().len(), 2);
    assert!(header::parse(&p, &bytes).is_ok());
    let (text, _) = split(&bytes);
    let edited = replace_token(&text, 0, "F17", false);
    assert!(
        edited.contains("\"dtype\":\"F17\"") && edited != text,
        "{edited}"
    );
    let edited = replace_token(&text, 0, "18446744073709551616", true);
    assert!(edited.contains("18446744073709551616"), "{edited}");
}
