use super::*;

fn parse(text: &str) -> Result<DatasetConfig> {
    DatasetConfig::from_toml_str(text, Path::new("/cfg/dataset.toml"))
}

#[test]
fn values_ascend_from_subset_to_dataset_to_general() {
    let c = parse(
        r#"
        [general]
        shuffle_caption = true
        keep_tokens = 1
        caption_extension = ".caption"
        resolution = 512
        [[datasets]]
        batch_size = 4
        keep_tokens = 2
          [[datasets.subsets]]
          image_dir = "a"
          [[datasets.subsets]]
          image_dir = "/abs/b"
          keep_tokens = 3
          num_repeats = 10
          is_reg = true
        "#,
    )
    .unwrap();
    let d = &c.datasets[0];
    assert_eq!(d.batch_size, 4);
    assert_eq!(d.buckets.resolution, (512, 512));
    assert_eq!(d.subsets[0].caption.keep_tokens, 2);
    assert_eq!(d.subsets[1].caption.keep_tokens, 3);
    assert!(d.subsets[0].caption.shuffle_caption);
    assert_eq!(d.subsets[0].caption_extension, ".caption");
    assert_eq!(d.subsets[0].image_dir, PathBuf::from("/cfg/a"));
    assert_eq!(d.subsets[1].image_dir, PathBuf::from("/abs/b"));
    assert_eq!(d.subsets[1].num_repeats, 10);
    assert!(d.subsets[1].is_reg && !d.subsets[0].is_reg);
}

#[test]
fn unknown_key_suggests_the_closest() {
    let e =
        parse("[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\nnum_repeat = 3\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown key `num_repeat`"), "{msg}");
    assert!(msg.contains("did you mean `num_repeats`"), "{msg}");
    let e = parse(
        "[general]\nbuckt_reso_steps = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\n",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("did you mean `bucket_reso_steps`"),
        "{e}"
    );
}

#[test]
fn misplaced_and_unsupported_keys_are_explained() {
    let e =
        parse("[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\nbatch_size = 3\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("belongs in [[datasets]] or [general]"),
        "{e}"
    );
    let e =
        parse("[general]\ncolor_aug = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\n")
            .unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = parse("[[datasets]]\nbucket_reso_steps = 8\n[[datasets.subsets]]\nimage_dir='a'\n")
        .unwrap_err();
    assert!(e.to_string().contains("bucket_reso_steps"), "{e}");
    let e =
        parse("[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\ncaption_dropout_rate = 1.5\n")
            .unwrap_err();
    assert!(e.to_string().contains("outside [0, 1]"), "{e}");
    let e =
        parse("[[datasets]]\n[[datasets.subsets]]\nflip_aug = 'yes'\nimage_dir='a'\n").unwrap_err();
    assert!(e.to_string().contains("expected true or false"), "{e}");
    let e = parse("[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n").unwrap_err();
    assert!(e.to_string().contains("image_dir"), "{e}");
    let e = parse("[[datasets]\n").unwrap_err();
    assert!(matches!(e, DataError::TomlSyntax { .. }), "{e}");
}

#[test]
fn resolution_forms_and_multi_resolution() {
    let c = parse("[[datasets]]\nresolution = [768, 512]\n[[datasets.subsets]]\nimage_dir='a'\n")
        .unwrap();
    assert_eq!(c.datasets[0].buckets.resolution, (768, 512));
    let c = parse("[[datasets]]\nresolutions = [512, 1024]\n[[datasets.subsets]]\nimage_dir='a'\n")
        .unwrap();
    assert_eq!(c.datasets.len(), 2);
    assert_eq!(c.datasets[1].buckets.resolution, (1024, 1024));
    assert_eq!(c.datasets[0].subsets, c.datasets[1].subsets);
}
