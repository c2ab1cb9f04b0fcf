//! Target selection: module and adapter counts for Flux.1-dev against the published figures
//! (kohya 304 modules; ai-toolkit 494 diffusers modules; parameters per rank from the anchor
//! tables), block lists, per-type ranks and regex rules.

use crate::common;

use common::flux_linears;
use fluxlora_lora::{BlockList, ModuleKind, Preset, RuleOverride, TargetSelector};

/// (modules selected, adapters, LoRA parameters per unit of rank) over Flux.1-dev.
fn tally(sel: &TargetSelector) -> (usize, usize, usize) {
    let (mut modules, mut adapters, mut params) = (0, 0, 0);
    for (path, d_in, d_out) in flux_linears(19, 38, 3072) {
        if let Some(t) = sel.select(&path, d_in, d_out) {
            modules += 1;
            for a in &t.adapters {
                adapters += 1;
                let (s, e) = a.rows.unwrap_or((0, d_out));
                params += (d_in + (e - s)) * a.rank / sel.rank;
            }
        }
    }
    (modules, adapters, params)
}

#[test]
fn presets_match_published_flux_dev_counts() {
    // kohya: 304 modules (Forge logs "304 keys"); 4,786,176 params per rank.
    assert_eq!(
        tally(&TargetSelector::new(Preset::Kohya, 16, 16.0)),
        (304, 304, 4_786_176)
    );
    // ai-toolkit / diffusers: 494 modules in diffusers terms; 5,369,856 params per rank.
    assert_eq!(
        tally(&TargetSelector::new(Preset::AiToolkit, 16, 16.0)),
        (304, 494, 5_369_856)
    );
    // attention-only to_q/to_k/to_v/to_out.0: 1,167,360 params per rank.
    assert_eq!(
        tally(&TargetSelector::new(Preset::Attention, 4, 4.0)),
        (76, 190, 1_167_360)
    );
}

#[test]
fn embedders_and_final_layer_are_opt_in() {
    let mut sel = TargetSelector::new(Preset::Kohya, 8, 8.0);
    assert!(sel.select("img_in", 64, 3072).is_none());
    sel.train_embedders = true;
    sel.train_final_layer = true;
    assert_eq!(tally(&sel).0, 304 + 10);
    assert!(sel.select("not_a_module", 4, 4).is_none());
    assert!(sel.select("double_blocks.x.img_attn.qkv", 4, 12).is_none());
}

#[test]
fn block_lists_parse_and_filter() {
    let list: BlockList = "0,1,8-12".parse().unwrap();
    let kept: Vec<usize> = (0..20).filter(|i| list.contains(*i)).collect();
    assert_eq!(kept, vec![0, 1, 8, 9, 10, 11, 12]);
    assert_eq!("all".parse::<BlockList>().unwrap(), BlockList::All);
    assert!(!"none".parse::<BlockList>().unwrap().contains(0));
    for bad in ["1,x", "5-2", "3-", "-"] {
        let err = bad.parse::<BlockList>().unwrap_err().to_string();
        assert!(err.contains(bad), "{err}");
    }
    let mut sel = TargetSelector::new(Preset::Kohya, 4, 4.0);
    sel.double_blocks = "0-1".parse().unwrap();
    sel.single_blocks = "none".parse().unwrap();
    assert_eq!(tally(&sel).0, 20);
}

#[test]
fn type_ranks_and_regex_rules_override_in_order() {
    let mut sel = TargetSelector::new(Preset::Kohya, 16, 16.0);
    sel.type_ranks.insert(ModuleKind::ImgMod, 0);
    sel.type_ranks.insert(ModuleKind::TxtMod, 0);
    sel.type_ranks.insert(ModuleKind::SingleMod, 4);
    let sel = sel
        .with_rule(
            r"^single_blocks\.(3[0-7])\.",
            RuleOverride {
                rank: Some(0),
                ..Default::default()
            },
        )
        .unwrap()
        .with_rule(
            r"_attn\.qkv$",
            RuleOverride {
                rank: Some(32),
                alpha: Some(8.0),
                lr_scale: Some(0.5),
            },
        )
        .unwrap();
    assert!(sel
        .select("double_blocks.0.img_mod.lin", 3072, 18432)
        .is_none());
    assert_eq!(
        sel.select("single_blocks.0.modulation.lin", 3072, 9216)
            .unwrap()
            .adapters[0]
            .rank,
        4
    );
    assert!(sel
        .select("single_blocks.31.linear1", 3072, 21504)
        .is_none());
    let qkv = sel
        .select("double_blocks.2.txt_attn.qkv", 3072, 9216)
        .unwrap();
    assert_eq!(
        (qkv.adapters[0].rank, qkv.adapters[0].alpha, qkv.lr_scale),
        (32, 8.0, 0.5)
    );
    assert_eq!(qkv.kind, ModuleKind::TxtAttn);
    // 19·(10−2) double + 30·2 single linear1/linear2 + 30 single modulation = 152 + 60 + 30.
    assert_eq!(tally(&sel).0, 242);
    assert!(TargetSelector::new(Preset::Kohya, 1, 1.0)
        .with_rule("(", RuleOverride::default())
        .is_err());
}

#[test]
fn row_splits_follow_diffusers_granularity() {
    let sel = TargetSelector::new(Preset::AiToolkit, 2, 2.0);
    let l1 = sel
        .select("single_blocks.0.linear1", 8, 8 * 3 + 32)
        .unwrap();
    let rows: Vec<_> = l1.adapters.iter().map(|a| a.rows.unwrap()).collect();
    assert_eq!(rows, vec![(0, 8), (8, 16), (16, 24), (24, 56)]);
    let qkv = sel.select("double_blocks.0.img_attn.qkv", 8, 24).unwrap();
    assert_eq!(
        qkv.adapters
            .iter()
            .map(|a| a.rows.unwrap())
            .collect::<Vec<_>>(),
        vec![(0, 8), (8, 16), (16, 24)]
    );
    assert!("nonsense".parse::<Preset>().is_err());
    assert_eq!("ai-toolkit".parse::<Preset>().unwrap(), Preset::AiToolkit);
}
