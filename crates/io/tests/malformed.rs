//! A corpus of damaged safetensors files, each built in the test from a valid file, must give a
//! specific error that names the file — never a panic. Random byte damage must never panic
//! either, and whatever we accept the reference `safetensors` crate accepts too, with the same
//! bytes.

use crate::common;

use std::path::{Path, PathBuf};

use common::{build, f32_raw, serialize_reference, Raw};
use fluxlora_io::{IoError, SafeTensorsFile};
use proptest::prelude::*;

/// A valid reference file: `a` F32 [2,3] (24 bytes), `b` F16 [4] (8 bytes), metadata.
fn valid_bytes() -> Vec<u8> {
    let b = Raw {
        dtype: safetensors::Dtype::F16,
        shape: vec![4],
        bytes: vec![0, 0x3C, 0, 0x40, 0, 0xC0, 0, 0],
    };
    let tensors = vec![
        ("a".to_string(), f32_raw(&[2, 3], &[1., 2., 3., 4., 5., 6.])),
        ("b".to_string(), b),
    ];
    serialize_reference(
        &tensors,
        Some([("format".to_string(), "pt".to_string())].into()),
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const DATA32: [u8; 32] = [7u8; 32];
const A: &str = r#""a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}"#;
const B: &str = r#""b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]}"#;

fn header(entries: &[&str]) -> String {
    format!("{{{}}}", entries.join(","))
}

#[test]
fn the_valid_base_file_opens() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.safetensors", &valid_bytes());
    let f = SafeTensorsFile::open(&p).unwrap();
    assert_eq!(f.names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(f.read_f32("b").unwrap().data, vec![1.0, 2.0, -2.0, 0.0]);
    let p = write(
        dir.path(),
        "built.safetensors",
        &build(&header(&[A, B]), &DATA32),
    );
    assert!(SafeTensorsFile::open(&p).is_ok());
}

#[test]
fn every_kind_of_damage_has_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_bytes();
    let n = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let mut not_utf8 = valid.clone();
    not_utf8[8 + 3] = 0xFF;
    let mut len_beyond = valid.clone();
    len_beyond[..8].copy_from_slice(&(valid.len() as u64).to_le_bytes());

    type Check = fn(&IoError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("empty", vec![], |e| matches!(e, IoError::EmptyFile { .. })),
        ("truncated_prefix", valid[..5].to_vec(), |e| {
            matches!(e, IoError::Truncated { len: 5, .. })
        }),
        ("header_len_beyond_file", len_beyond, |e| {
            matches!(e, IoError::HeaderBeyondFile { .. })
        }),
        ("header_len_zero", build("", &[]), |e| {
            matches!(e, IoError::HeaderTooSmall { header_len: 0, .. })
        }),
        ("header_len_one", build("{", &[]), |e| {
            matches!(e, IoError::HeaderTooSmall { header_len: 1, .. })
        }),
        (
            "header_len_huge",
            {
                let mut v = (1u64 << 40).to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            |e| matches!(e, IoError::HeaderTooLarge { .. }),
        ),
        ("cut_in_header", valid[..8 + n / 2].to_vec(), |e| {
            matches!(e, IoError::HeaderBeyondFile { .. })
        }),
        (
            "cut_in_data",
            valid[..valid.len() - 4].to_vec(),
            |e| matches!(e, IoError::OffsetsOutOfRange { key, .. } if key == "b"),
        ),
        ("not_utf8", not_utf8, |e| {
            matches!(e, IoError::HeaderNotUtf8 { .. })
        }),
        ("bad_json", build(r#"{"a": {"dtype": "F32","#, &[]), |e| {
            matches!(e, IoError::HeaderJson { .. })
        }),
        ("json_not_object", build("[1, 2, 3]", &[]), |e| {
            matches!(e, IoError::HeaderJson { .. })
        }),
        ("trailing_json", build(r#"{} {}"#, &[]), |e| {
            matches!(e, IoError::HeaderJson { .. })
        }),
        (
            "unknown_dtype",
            build(&header(&[&A.replace("F32", "F17"), B]), &DATA32),
            |e| {
                matches!(
                    e,
                    IoError::UnknownDtype { key, dtype, .. } if key == "a" && dtype == "F17"
                )
            },
        ),
        (
            "offsets_out_of_range",
            build(&header(&[A, &B.replace("[24,32]", "[24,40]")]), &DATA32),
            |e| matches!(e, IoError::OffsetsOutOfRange { key, end: 40, .. } if key == "b"),
        ),
        (
            "overlapping",
            build(
                &header(&[A, &B.replace("[24,32]", "[16,24]")]),
                &DATA32[..24],
            ),
            |e| matches!(e, IoError::OverlappingTensors { .. }),
        ),
        (
            "gap",
            build(&header(&[A, &B.replace("[24,32]", "[28,36]")]), &[0u8; 36]),
            |e| {
                matches!(
                    e,
                    IoError::GapBetweenTensors { next, gap_start: 24, gap_end: 28, .. }
                        if next == "b"
                )
            },
        ),
        ("trailing_bytes", build(&header(&[A, B]), &[0u8; 40]), |e| {
            matches!(e, IoError::TrailingBytes { extra: 8, .. })
        }),
        (
            "shape_byte_mismatch",
            build(&header(&[&A.replace("[2,3]", "[2,2]"), B]), &DATA32),
            |e| {
                matches!(
                    e,
                    IoError::SizeMismatch { key, expected: 16, actual: 24, .. } if key == "a"
                )
            },
        ),
        (
            "shape_overflow",
            build(
                concat!(
                    r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"#,
                    r#""data_offsets":[0,0]}}"#
                ),
                &[],
            ),
            |e| matches!(e, IoError::ShapeOverflow { .. }),
        ),
        (
            "duplicate_key",
            build(
                &header(&[A, B, &B.replace("[24,32]", "[32,40]")]),
                &[0u8; 40],
            ),
            |e| matches!(e, IoError::DuplicateKey { key, .. } if key == "b"),
        ),
        (
            "metadata_not_strings",
            build(&header(&[r#""__metadata__":{"x":1}"#, A, B]), &DATA32),
            |e| matches!(e, IoError::BadMetadata { problem, .. } if problem.contains("`x`")),
        ),
        (
            "metadata_not_object",
            build(&header(&[r#""__metadata__":[1,"a"]"#, A, B]), &DATA32),
            |e| matches!(e, IoError::BadMetadata { .. }),
        ),
        (
            "metadata_duplicate",
            build(
                &header(&[r#""__metadata__":{"x":"1","x":"2"}"#, A, B]),
                &DATA32,
            ),
            |e| matches!(e, IoError::BadMetadata { problem, .. } if problem.contains("duplicate")),
        ),
        (
            "missing_dtype",
            build(r#"{"a":{"shape":[2],"data_offsets":[0,8]}}"#, &[0u8; 8]),
            |e| {
                matches!(
                    e,
                    IoError::InvalidEntry { key, problem, .. }
                        if key == "a" && problem.contains("dtype")
                )
            },
        ),
        (
            "negative_shape",
            build(
                r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                &[0u8; 8],
            ),
            |e| matches!(e, IoError::InvalidEntry { .. }),
        ),
        (
            "reversed_offsets",
            build(
                r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
                &[0u8; 8],
            ),
            |e| {
                matches!(
                    e,
                    IoError::InvalidEntry { problem, .. } if problem.contains("end before")
                )
            },
        ),
        ("entry_not_object", build(r#"{"a":5}"#, &[]), |e| {
            matches!(e, IoError::InvalidEntry { .. })
        }),
    ];
    assert!(cases.len() >= 12);
    for (name, bytes, check) in cases {
        let p = write(dir.path(), &format!("{name}.safetensors"), &bytes);
        let err = match SafeTensorsFile::open(&p) {
            Ok(_) => panic!("{name}: damaged file was accepted"),
            Err(e) => e,
        };
        assert!(check(&err), "{name}: wrong error variant: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&p.display().to_string()),
            "{name}: message does not name the file: {msg}"
        );
    }
}

#[test]
fn missing_tensor_and_missing_file_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.safetensors", &valid_bytes());
    let f = SafeTensorsFile::open(&p).unwrap();
    let e = f.read_f32("nope").unwrap_err();
    assert!(
        matches!(e, IoError::TensorNotFound { .. }) && e.to_string().contains("nope"),
        "{e}"
    );
    let missing = dir.path().join("absent.safetensors");
    let e = SafeTensorsFile::open(&missing).unwrap_err();
    assert!(
        matches!(e, IoError::Io { .. }) && e.to_string().contains("absent.safetensors"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random byte edits and truncations never panic; anything we accept, the reference crate
    /// accepts with the same tensor bytes.
    #[test]
    fn random_damage_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid_bytes();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "fuzz.safetensors", &bytes);
        match SafeTensorsFile::open(&p) {
            Ok(f) => {
                let reference = safetensors::SafeTensors::deserialize(&bytes);
                prop_assert!(
                    reference.is_ok(),
                    "we accepted a file the reference rejects: {:?}",
                    reference.err()
                );
                let reference = reference.unwrap();
                for name in f.names() {
                    prop_assert_eq!(f.raw(name).unwrap(), reference.tensor(name).unwrap().data());
                    let _ = f.read_f32(name).unwrap();
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.safetensors")),
        }
    }
}
