//! The `medium` preset of `make_qwen_fixture.py` (Qwen2.5-0.5B-like decoder, 8-block vision
//! tower) as a model config, for the benchmarks that run it with random weights: the model's
//! medium bench and `vidx bench pipeline`. Included by path.

use vidx_model::Config;

/// First special token id of the Qwen2.5 vocabulary.
const SPECIAL_BASE: u32 = 151_643;

/// The medium preset's config (the real Qwen2.5 vocabulary and special token ids).
pub fn medium_config() -> vidx_model::Result<Config> {
    let id = |i: u32| SPECIAL_BASE + i;
    let json = serde_json::json!({
        "vocab_size": 151_936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "max_position_embeddings": 32768, "tie_word_embeddings": true,
        "bos_token_id": id(0), "eos_token_id": id(2), "vision_start_token_id": id(9),
        "vision_end_token_id": id(10), "image_token_id": id(12), "video_token_id": id(13),
        "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
        "vision_config": {"depth": 8, "hidden_size": 320, "intermediate_size": 864, "num_heads": 4,
            "in_chans": 3, "out_hidden_size": 896, "patch_size": 14, "spatial_merge_size": 2,
            "window_size": 112, "fullatt_block_indexes": [3, 7], "tokens_per_second": 2,
            "temporal_patch_size": 2}
    });
    Config::from_json(&json.to_string())
}
