//! Our writer against the reference `safetensors` crate as an independent reader, and the
//! reference writer against our reader.

use crate::common;

use std::collections::{BTreeMap, HashMap};

use common::{f32_raw, values, write_reference, Raw};
use fluxlora_io::{write_safetensors, Dtype, HostTensor, SafeTensorsFile, TensorRef};

fn meta() -> BTreeMap<String, String> {
    [
        ("format", "pt"),
        ("ss_network_dim", "16"),
        ("quote\"d", "ünïcødé \n ok"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

#[test]
fn our_writer_is_read_identically_by_the_reference_crate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ours.safetensors");
    let w = HostTensor::new(vec![3, 5], values(1, 15)).unwrap();
    // Values exactly representable in F16 and BF16, with their bit patterns worked out by hand.
    let exact = HostTensor::new(vec![4], vec![0.5, -2.0, 1.5, 0.0]).unwrap();
    let f16_bits: [u16; 4] = [0x3800, 0xC000, 0x3E00, 0x0000];
    let bf16_bits: [u16; 4] = [0x3F00, 0xC000, 0x3FC0, 0x0000];
    let ints: Vec<u8> = [-3i64, 7, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let scalar = HostTensor::scalar(16.0);
    let tensors = [
        ("w", TensorRef::f32(&w)),
        ("h", TensorRef::cast(&exact, Dtype::F16)),
        ("bf", TensorRef::cast(&exact, Dtype::BF16)),
        ("i", TensorRef::raw(Dtype::I64, &[3], &ints)),
        ("alpha", TensorRef::from(&scalar)),
    ];
    write_safetensors(&p, &tensors, &meta()).unwrap();

    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0, "header must be padded to 8 bytes");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, reference_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let want_meta: HashMap<String, String> = meta().into_iter().collect();
    assert_eq!(reference_meta.metadata().as_ref(), Some(&want_meta));
    let mut names = st.names();
    names.sort();
    assert_eq!(names, ["alpha", "bf", "h", "i", "w"]);

    let t = st.tensor("w").unwrap();
    assert_eq!(
        (t.dtype(), t.shape()),
        (safetensors::Dtype::F32, &[3usize, 5][..])
    );
    let got: Vec<f32> = t
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, w.data);
    let h = st.tensor("h").unwrap();
    assert_eq!(h.dtype(), safetensors::Dtype::F16);
    assert_eq!(
        h.data(),
        f16_bits
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<_>>()
    );
    let bf = st.tensor("bf").unwrap();
    assert_eq!(bf.dtype(), safetensors::Dtype::BF16);
    assert_eq!(
        bf.data(),
        bf16_bits
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(st.tensor("i").unwrap().data(), &ints[..]);
    let a = st.tensor("alpha").unwrap();
    assert_eq!(a.shape(), &[] as &[usize]);
    assert_eq!(a.data(), 16f32.to_le_bytes());
    // Every tensor is aligned to its element size inside the data section.
    for name in st.names() {
        let t = st.tensor(name).unwrap();
        let off = t.data().as_ptr() as usize - bytes.as_ptr() as usize - 8 - n as usize;
        let size = match t.dtype() {
            safetensors::Dtype::F16 | safetensors::Dtype::BF16 => 2,
            safetensors::Dtype::I64 => 8,
            _ => 4,
        };
        assert_eq!(off % size, 0, "{name} at {off}");
    }

    // Deterministic: the same inputs give the same bytes; our reader reads it back.
    let p2 = dir.path().join("again.safetensors");
    write_safetensors(&p2, &tensors, &meta()).unwrap();
    assert_eq!(std::fs::read(&p2).unwrap(), bytes);
    let ours = SafeTensorsFile::open(&p).unwrap();
    assert_eq!(ours.read_f32("h").unwrap().data, exact.data);
    assert_eq!(ours.read_f32("bf").unwrap().data, exact.data);
    assert_eq!(
        ours.read_f32("i").unwrap().data,
        vec![-3.0, 7.0, (1u64 << 40) as f32]
    );
    assert_eq!(ours.read_scalar("alpha").unwrap(), 16.0);
    assert_eq!(ours.metadata(), &meta());
}

#[test]
fn reference_writer_is_read_identically_by_ours() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ref.safetensors");
    let w = values(7, 24);
    let bf = Raw {
        dtype: safetensors::Dtype::BF16,
        shape: vec![2],
        bytes: vec![0x80, 0x3F, 0x00, 0xC0],
    };
    let i32s = Raw {
        dtype: safetensors::Dtype::I32,
        shape: vec![2, 1],
        bytes: [5i32, -9].iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let empty = Raw {
        dtype: safetensors::Dtype::F32,
        shape: vec![0, 4],
        bytes: vec![],
    };
    let tensors = vec![
        ("model.w".to_string(), f32_raw(&[4, 6], &w)),
        ("model.bf".to_string(), bf),
        ("i".to_string(), i32s),
        ("empty".to_string(), empty),
    ];
    write_reference(&p, &tensors, Some(meta().into_iter().collect()));

    let f = SafeTensorsFile::open(&p).unwrap();
    assert_eq!(
        f.names().collect::<Vec<_>>(),
        ["empty", "i", "model.bf", "model.w"]
    );
    assert_eq!(f.metadata(), &meta());
    let (dt, shape) = f.info("model.w").unwrap();
    assert_eq!((dt, shape), (Dtype::F32, &[4usize, 6][..]));
    assert_eq!(f.read_f32("model.w").unwrap().data, w);
    assert_eq!(f.raw("model.w").unwrap(), &tensors[0].1.bytes[..]);
    // BF16 0x3F80 = 1.0, 0xC000 = -2.0.
    assert_eq!(f.read_f32("model.bf").unwrap().data, vec![1.0, -2.0]);
    assert_eq!(
        f.read_f32("i").unwrap(),
        HostTensor::new(vec![2, 1], vec![5.0, -9.0]).unwrap()
    );
    assert_eq!(f.read_f32("empty").unwrap().shape, vec![0, 4]);
}

#[test]
fn our_file_read_by_reference_matches_with_many_random_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("many.safetensors");
    let ts: Vec<(String, HostTensor)> = (0..20)
        .map(|i| {
            let shape = vec![1 + i % 3, 1 + i % 5];
            let n = shape.iter().product();
            (
                format!("t{i:02}"),
                HostTensor::new(shape, values(i as u64, n)).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, TensorRef)> = ts
        .iter()
        .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(&p, &refs, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (n, t) in &ts {
        let v = st.tensor(n).unwrap();
        assert_eq!(v.shape(), &t.shape[..]);
        let got: Vec<f32> = v
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&got, &t.data);
    }
}

#[test]
fn released_tensors_read_back_the_same_bytes() {
    // Tensors of several pages and of a few bytes, sharing pages at their edges: dropping one
    // tensor's pages (`madvise(DONTNEED)`, also done by `read_f32`) must leave every byte of it
    // and of its neighbours readable and unchanged.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.safetensors");
    let sizes = [100_003usize, 3, 250_000, 1];
    let tensors: Vec<(String, Raw)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("t{i}"), f32_raw(&[n], &values(40 + i as u64, n))))
        .collect();
    write_reference(&p, &tensors, None);
    let f = SafeTensorsFile::open(&p).unwrap();
    for round in 0..2 {
        for (name, raw) in tensors.iter().rev() {
            let t = f.read_f32(name).unwrap();
            let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(bytes, raw.bytes, "{name}, round {round}");
            f.release(name).unwrap();
            assert_eq!(f.raw(name).unwrap(), &raw.bytes[..], "{name} after release");
        }
    }
    assert!(f.release("missing").is_err());
}
