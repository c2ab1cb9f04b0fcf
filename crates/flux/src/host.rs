//! The one bridge between the host and Burn: [`HostTensor`] (f32, row-major, `fluxlora-io`'s
//! type) and plain `Vec<f32>` values to a device tensor, and a device tensor's values back.
//! Every crate above this one moves data across with these functions.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use fluxlora_io::HostTensor;

use crate::error::{FluxError, Result};

/// `data` in row-major order as a `shape` tensor on `device` (f32, or the backend's float).
pub fn tensor<B: Backend, const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn dims<const D: usize>(h: &HostTensor, what: &str) -> Result<[usize; D]> {
    h.shape.as_slice().try_into().map_err(|_| FluxError::Input {
        name: what.to_string(),
        message: format!(
            "a host tensor of shape {:?} cannot become a {D}-D tensor",
            h.shape
        ),
    })
}

/// A host tensor on `device`; its rank must be `D`.
pub fn upload<B: Backend, const D: usize>(
    h: &HostTensor,
    device: &B::Device,
) -> Result<Tensor<B, D>> {
    Ok(tensor(h.data.clone(), dims::<D>(h, "host tensor")?, device))
}

/// A host tensor on `device`, stored as `dtype` (e.g. bf16 frozen weights); its rank must be
/// `D`. Takes the tensor so its values are not copied twice.
pub fn upload_as<B: Backend, const D: usize>(
    h: HostTensor,
    device: &B::Device,
    dtype: DType,
) -> Result<Tensor<B, D>> {
    let shape = dims::<D>(&h, "host tensor")?;
    Ok(Tensor::from_data(
        TensorData::new(h.data, shape),
        (device, dtype),
    ))
}

/// A tensor's values on the host as f32, in row-major order.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| FluxError::ReadBack(format!("{e:?}")))
}

/// A tensor as a host tensor of the same shape.
pub fn download<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    Ok(HostTensor {
        shape,
        data: values(t)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn round_trips_and_checks_the_rank() {
        let dev = Default::default();
        let h = HostTensor {
            shape: vec![2, 3],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let t = upload::<NdArray, 2>(&h, &dev).unwrap();
        assert_eq!(t.dims(), [2, 3]);
        assert_eq!(
            download(t.clone().transpose()).unwrap().data,
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        assert_eq!(download(t).unwrap(), h);
        let err = upload::<NdArray, 3>(&h, &dev).unwrap_err().to_string();
        assert!(err.contains("[2, 3]") && err.contains("3-D"), "{err}");
    }
}
