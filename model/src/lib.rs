//! Open-o3 Video (Qwen2.5-VL) in candle.
