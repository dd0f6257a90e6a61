//! Incremental detokenising with the real Qwen2.5 tokenizer (`tiny-realvocab`): the streamed
//! deltas add up to the text of the whole answer, multi-byte characters split across tokens
//! and special tokens included.

use std::path::PathBuf;

use anyhow::Result;
use vidx_model::ModelFiles;
use vidx_model::detokenize::TextStream;

#[test]
fn streamed_deltas_add_up_to_the_whole_decoded_answer() -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    let tokenizer = ModelFiles::from_dir(&dir)?.tokenizer()?;
    let text = "<think>The 🚗 (red) car at <t>3.5</t>s — naïve café, 日本語のテキスト, ×2</think>\n<answer>Yes.</answer>";
    let mut ids = tokenizer.encode(text)?;
    let im_end = tokenizer.require_id("<|im_end|>")?;
    ids.insert(ids.len() / 2, im_end);
    let mut stream = TextStream::new(&tokenizer);
    let mut streamed = String::new();
    let mut deltas = 0;
    for &id in &ids {
        if let Some(delta) = stream.push(id)? {
            assert!(
                !delta.contains('\u{FFFD}'),
                "a delta split a character: {delta:?}"
            );
            streamed.push_str(&delta);
            deltas += 1;
        }
    }
    assert_eq!(streamed, tokenizer.decode(&ids)?);
    assert_eq!(stream.tokens(), ids.as_slice());
    assert!(
        deltas > ids.len() / 2,
        "{deltas} deltas for {} tokens",
        ids.len()
    );
    Ok(())
}
