//! Backend selection: names, compiled features, automatic choice.

use fluxlora::backend::*;

#[test]
fn parses_names_and_rejects_unknown() {
    assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
    assert_eq!("cpu".parse::<BackendKind>().unwrap(), BackendKind::NdArray);
    assert!(matches!(
        "tpu".parse::<BackendKind>(),
        Err(BackendError::Unknown(_))
    ));
}

#[test]
fn explicit_request_respects_compiled_features() {
    for kind in BackendKind::ALL {
        let got = select(Some(kind.name()));
        if kind.compiled() {
            assert_eq!(got.unwrap(), kind);
        } else {
            assert_eq!(got.unwrap_err(), BackendError::NotCompiled(kind));
        }
    }
    assert!(select(Some("bogus")).is_err());
}

#[test]
fn auto_picks_a_compiled_backend() {
    let kind = select(Some("auto")).unwrap();
    assert!(kind.compiled());
    if !nvidia_driver_present() && !hardware_gpu_adapter() && BackendKind::NdArray.compiled() {
        assert_eq!(kind, BackendKind::NdArray);
    }
}
