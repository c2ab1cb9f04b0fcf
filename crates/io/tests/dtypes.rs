//! Upcasts to f32 against values computed by PyTorch (`tensor.float()`), stored in
//! `fixtures/io/dtypes.safetensors` by `fixtures/io/make_dtype_fixture.py`: all 256 F8_E4M3FN and
//! F8_E5M2 patterns, ~700 F16 and BF16 patterns with specials, F64 rounding/overflow cases and
//! integer types.

use std::path::PathBuf;

use fluxlora_io::{Dtype, SafeTensorsFile};

fn fixture() -> SafeTensorsFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/io/dtypes.safetensors");
    SafeTensorsFile::open(p)
        .expect("fixture present (regenerate with fixtures/io/make_dtype_fixture.py)")
}

/// Bitwise equal, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn every_dtype_matches_torch() {
    let f = fixture();
    let cases = [
        ("e4m3fn", Dtype::F8_E4M3, 256),
        ("e5m2", Dtype::F8_E5M2, 256),
        ("f16", Dtype::F16, 0),
        ("bf16", Dtype::BF16, 0),
        ("f64", Dtype::F64, 0),
        ("i64", Dtype::I64, 0),
        ("i32", Dtype::I32, 0),
        ("i16", Dtype::I16, 0),
        ("i8", Dtype::I8, 0),
        ("u8", Dtype::U8, 0),
        ("bool", Dtype::BOOL, 0),
    ];
    for (name, dtype, count) in cases {
        assert_eq!(f.info(name).unwrap().0, dtype, "{name}");
        let got = f.read_f32(name).unwrap();
        let want = f.read_f32(&format!("{name}_as_f32")).unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        if count > 0 {
            assert_eq!(got.numel(), count, "{name}");
        }
        for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
            let pattern = &f.raw(name).unwrap()[i * dtype.size()..(i + 1) * dtype.size()];
            assert!(
                same(*g, *w),
                "{name}[{i}] bits {pattern:02x?}: got {g:e} ({:08x}), torch {w:e} ({:08x})",
                g.to_bits(),
                w.to_bits()
            );
        }
    }
}

#[test]
fn e4m3fn_nan_encodings_and_no_infinity() {
    let f = fixture();
    let v = f.read_f32("e4m3fn").unwrap().data;
    let nans: Vec<usize> = (0..256).filter(|&i| v[i].is_nan()).collect();
    assert_eq!(nans, vec![0x7F, 0xFF]);
    assert!(v.iter().all(|x| !x.is_infinite()));
    assert_eq!(v[0x7E], 448.0);
}
