//! Chat prompts in the Qwen2.5-VL template and the Open-o3 Video frame layout, and a thin
//! wrapper over the `tokenizers` tokenizer. Placeholders are written once per image/video and
//! expanded to one token per merged vision token after tokenisation, like the HF processor.
//!
//! Open-o3 Video layout (each sampled frame is an image with a text timestamp):
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n
//! Frame 1 at 0.0s: <|vision_start|><|image_pad|><|vision_end|>\n ...
//! The video is in total {N} seconds.\n{question}<|im_end|>\n<|im_start|>assistant\n
//! ```

use crate::{Error, Result};

/// Open-o3 Video's think/answer system prompt without the grounding instructions (what the
/// transformers reference fixtures were made with). vidx asks with
/// [`OPEN_O3_GROUNDED_SYSTEM_PROMPT`], the one grounded prompt.
pub const OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT: &str = "A conversation between user and assistant. The user provides a video and asks a question, and the Assistant solves it. The assistant MUST first think about the reasoning process in the mind and then provide the user with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively.";

/// System prompt of Open-o3 Video's grounded reasoning (its `eval/inference_example.py`): the
/// reasoning cites evidence as `<obj>name</obj><box>[x1,y1,x2,y2]</box>at<t>seconds</t>s`.
pub const OPEN_O3_GROUNDED_SYSTEM_PROMPT: &str = "A conversation between user and assistant. The user provides a video and asks a question, and the Assistant solves it. The assistant MUST first think about the reasoning process in the mind and then provide the user with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively. All reasoning must be grounded in visual evidence from the video. When you mention any related object, person, or specific visual element in the reasoning process, you must strictly follow the following format: `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`. The answer part only requires a text response; tags like <obj>, <box>, <t> are not needed.";

/// Default system prompt of the Qwen2.5-VL chat template.
pub const QWEN_DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// `<|image_pad|>` placeholder text.
pub const IMAGE_PAD: &str = "<|image_pad|>";
/// `<|video_pad|>` placeholder text.
pub const VIDEO_PAD: &str = "<|video_pad|>";
/// End-of-turn marker.
pub const IM_END: &str = "<|im_end|>";
/// End-of-text marker.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Timestamp as Open-o3 Video writes it: Python's `round(t, 1)` printed with one decimal.
pub fn format_timestamp(seconds: f64) -> String {
    format!("{seconds:.1}")
}

/// The shared part of an Open-o3 Video prompt: system turn, user turn opening, one line per
/// frame and the total-duration line. Everything a question depends on comes after it.
pub fn open_o3_prefix(system_prompt: &str, timestamps: &[f64], duration_seconds: f64) -> String {
    let mut out = format!("<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n");
    for (i, t) in timestamps.iter().enumerate() {
        out.push_str(&format!(
            "Frame {} at {}s: <|vision_start|>{IMAGE_PAD}<|vision_end|>\n",
            i + 1,
            format_timestamp(*t)
        ));
    }
    out.push_str(&format!(
        "The video is in total {} seconds.\n",
        duration_seconds.max(0.0).trunc() as u64
    ));
    out
}

/// The per-question tail of an Open-o3 Video prompt, ending with the assistant turn opening.
pub fn open_o3_suffix(question: &str) -> String {
    format!("{question}<|im_end|>\n<|im_start|>assistant\n")
}

/// A Qwen2.5-VL chat prompt with one native video (`<|video_pad|>`) before the question.
pub fn video_prompt(system_prompt: &str, question: &str) -> String {
    format!(
        "<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n<|vision_start|>{VIDEO_PAD}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// A Qwen2.5-VL chat prompt with one image before a question (the default system prompt): what
/// [`crate::OpenO3Video::yes_probability`] asks about a crop.
pub fn image_question_prompt(question: &str) -> String {
    format!(
        "<|im_start|>system\n{QWEN_DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// The answers [`crate::OpenO3Video::yes_probability`] weighs: the first token of a yes or a
/// no, as the assistant turn would start it.
pub const YES_WORDS: &[&str] = &["Yes", "yes", "YES"];
/// See [`YES_WORDS`].
pub const NO_WORDS: &[&str] = &["No", "no", "NO"];

/// Replaces the i-th `pad_id` in `ids` by `counts[i]` copies of it.
pub fn expand_placeholders(ids: &[u32], pad_id: u32, counts: &[usize]) -> Result<Vec<u32>> {
    let found = ids.iter().filter(|&&t| t == pad_id).count();
    if found != counts.len() {
        return Err(Error::Input(format!(
            "prompt has {found} placeholders for {} vision inputs",
            counts.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len() + counts.iter().sum::<usize>());
    let mut next = counts.iter();
    for &t in ids {
        if t == pad_id {
            let n = next.next().copied().unwrap_or(0);
            out.extend(std::iter::repeat_n(pad_id, n));
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// The Qwen2 byte-level BPE tokenizer (`tokenizer.json`).
#[derive(Debug, Clone)]
pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
}

impl QwenTokenizer {
    /// Parses the contents of a `tokenizer.json`.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Wraps an existing tokenizer.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }

    /// Ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, with special tokens removed.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Id of a token such as `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Id of a token that must exist.
    pub fn require_id(&self, token: &str) -> Result<u32> {
        self.token_id(token)
            .ok_or_else(|| Error::Tokenizer(format!("token {token} missing from vocabulary")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_python_round_to_one_decimal() {
        assert_eq!(format_timestamp(0.0), "0.0");
        assert_eq!(format_timestamp(0.5), "0.5");
        assert_eq!(format_timestamp(12.0), "12.0");
        assert_eq!(format_timestamp(2.0 / 3.0), "0.7");
        // Exact binary ties round to even, like Python's round(0.25, 1) == 0.2.
        assert_eq!(format_timestamp(0.25), "0.2");
        assert_eq!(format_timestamp(0.75), "0.8");
    }

    #[test]
    fn prefix_layout() {
        let p = open_o3_prefix("S", &[0.0, 0.5], 1.9);
        assert_eq!(
            p,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n\
             Frame 1 at 0.0s: <|vision_start|><|image_pad|><|vision_end|>\n\
             Frame 2 at 0.5s: <|vision_start|><|image_pad|><|vision_end|>\n\
             The video is in total 1 seconds.\n"
        );
    }

    #[test]
    fn placeholder_expansion_checks_counts() {
        assert_eq!(
            expand_placeholders(&[1, 9, 2, 9], 9, &[2, 1]).unwrap(),
            vec![1, 9, 9, 2, 9]
        );
        assert!(expand_placeholders(&[1, 9], 9, &[2, 1]).is_err());
    }
}
