//! `resize_rgb_bicubic` against torchvision v2 `resize(BICUBIC, antialias=True)` on uint8
//! images (up- and down-scaling, one or both axes). Reference data: `data/resize_cases.safetensors`,
//! written by `data/make_resize_cases.py`.

use anyhow::{Context, Result};
use candle_core::Device;
use vidx_model::resize_rgb_bicubic;

#[test]
fn bicubic_antialias_matches_torchvision_uint8() -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/resize_cases.safetensors");
    let cases = candle_core::safetensors::load(path, &Device::Cpu)?;
    let mut checked = 0;
    for i in 0.. {
        let Some(input) = cases.get(&format!("case{i}.input")) else {
            break;
        };
        let output = cases.get(&format!("case{i}.output")).context("output")?;
        let (h, w, _) = input.dims3()?;
        let (oh, ow, _) = output.dims3()?;
        let got = resize_rgb_bicubic(&input.flatten_all()?.to_vec1::<u8>()?, w, h, ow, oh)?;
        let want = output.flatten_all()?.to_vec1::<u8>()?;
        let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            off, 0,
            "case {i} ({h}x{w} -> {oh}x{ow}): {off} values differ"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
    Ok(())
}
