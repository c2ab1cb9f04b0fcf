//! Which adapter algorithm a target gets: plain LoRA, or one of the LyCORIS kinds (LoKr, LoHa,
//! DoRA), with the settings only that kind has.

use crate::error::LoraError;

/// The adapter algorithm (`network_type`; LyCORIS's `algo`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Network {
    /// `ΔW = (α/r)·B·A` ([`LoraAdapter`](crate::LoraAdapter)).
    #[default]
    Lora,
    /// `ΔW = kron(W1, W2)·scale` ([`LokrAdapter`](crate::LokrAdapter)).
    Lokr {
        /// LyCORIS's `factor`: the size of the small Kronecker factor, `-1` = as balanced as
        /// the dimension allows (see [`factorization`](crate::lokr::factorization)).
        factor: i64,
        /// LyCORIS's `full_matrix`: W2 full instead of low-rank (scale 1).
        full_rank: bool,
    },
    /// `ΔW = (W1a·W1b) ⊙ (W2a·W2b)·α/r` ([`LohaAdapter`](crate::LohaAdapter)).
    Loha,
    /// `W' = m ⊙ (W + ΔW)/‖W + ΔW‖` per output channel ([`DoraAdapter`](crate::DoraAdapter)).
    Dora,
}

impl Network {
    /// The config name (`lora`, `lokr`, `loha`, `dora`).
    pub fn name(self) -> &'static str {
        match self {
            Network::Lora => "lora",
            Network::Lokr { .. } => "lokr",
            Network::Loha => "loha",
            Network::Dora => "dora",
        }
    }

    /// Parses a `network_type` or LyCORIS `algo` name: `lora` (also `locon`, which is LoRA on
    /// linears), `lokr` (also `kron`), `loha` (also `hada`), `dora`. LoKr gets LyCORIS's
    /// defaults (`factor = -1`, low-rank W2); set them on the result.
    pub fn parse(name: &str) -> Result<Self, LoraError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "lora" | "locon" => Ok(Network::Lora),
            "lokr" | "kron" => Ok(Network::Lokr {
                factor: -1,
                full_rank: false,
            }),
            "loha" | "hada" => Ok(Network::Loha),
            "dora" => Ok(Network::Dora),
            _ => Err(LoraError::UnknownName {
                what: "network type",
                name: name.to_string(),
                expected: "lora, lokr, loha, dora (LyCORIS algo names locon, kron, hada too)"
                    .into(),
            }),
        }
    }
}

impl Network {
    /// Values one adapter of this kind stores on a linear `d_in → rows` at `rank` (the shapes
    /// [`LycorisAdapter::init`](crate::LycorisAdapter::init) builds; LoKr's W2 is full when
    /// `full_rank` or when `2·rank` reaches its larger side, as in LyCORIS).
    pub fn num_params(self, rank: usize, d_in: usize, rows: usize) -> usize {
        match self {
            Network::Lora => rank * (d_in + rows),
            Network::Lokr { factor, full_rank } => {
                let (in_m, in_n) = crate::lokr::factorization(d_in, factor);
                let (out_l, out_k) = crate::lokr::factorization(rows, factor);
                let w2 = if full_rank || 2 * rank >= out_k.max(in_n) {
                    out_k * in_n
                } else {
                    rank * (out_k + in_n)
                };
                out_l * in_m + w2
            }
            Network::Loha => 2 * rank * (d_in + rows),
            Network::Dora => rank * (d_in + rows) + rows,
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_list_the_choices() {
        for n in ["lora", "lokr", "loha", "dora"] {
            assert_eq!(Network::parse(n).unwrap().name(), n);
        }
        assert_eq!(Network::parse("KRON").unwrap().name(), "lokr");
        assert_eq!(Network::parse("hada").unwrap(), Network::Loha);
        let e = Network::parse("oft").unwrap_err().to_string();
        assert!(e.contains("\"oft\"") && e.contains("lokr"), "{e}");
    }

    #[test]
    fn parameter_counts_match_the_adapters_built() {
        use burn::backend::NdArray;
        let device = Default::default();
        let base = || burn::tensor::Tensor::<NdArray, 2>::ones([24, 36], &device);
        for network in [
            Network::Lora,
            Network::Lokr {
                factor: -1,
                full_rank: false,
            },
            Network::Lokr {
                factor: 4,
                full_rank: false,
            },
            Network::Lokr {
                factor: -1,
                full_rank: true,
            },
            Network::Loha,
            Network::Dora,
        ] {
            for rank in [1, 2, 8] {
                let mut spec = crate::AdapterSpec::new(rank, rank as f32);
                spec.network = network;
                let built = match crate::LycorisAdapter::init("m", &spec, 24, 36, base, &device)
                    .unwrap()
                {
                    Some(a) => a.num_params(),
                    None => {
                        let a = crate::LoraAdapter::<NdArray>::init("m", 24, 36, &spec, &device)
                            .unwrap();
                        a.lora_a.val().shape().num_elements()
                            + a.lora_b.val().shape().num_elements()
                    }
                };
                assert_eq!(
                    network.num_params(rank, 24, 36),
                    built,
                    "{network:?} rank {rank}"
                );
            }
        }
    }
}
