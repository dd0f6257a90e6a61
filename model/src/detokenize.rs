//! Incremental detokenising: text deltas of a growing token sequence, decoding only a short
//! window per token instead of the whole answer.
//!
//! Byte-level BPE tokens may end in the middle of a UTF-8 character, and some decoders change a
//! token's text depending on the one before it. So [`TextStream`] decodes the tokens from the
//! start of the last emitted delta's tokens (`prefix_offset`): the text those tokens made
//! before and the text they make now with the new ones; the difference is the delta, held back
//! while it ends in an incomplete character (U+FFFD). The window stays a few tokens long.

use crate::Result;
use crate::prompt::QwenTokenizer;

/// Turns tokens into text deltas as they are generated.
#[derive(Debug)]
pub struct TextStream<'t> {
    tokenizer: &'t QwenTokenizer,
    tokens: Vec<u32>,
    /// Start of the window decoded for each new token.
    prefix_offset: usize,
    /// End of the tokens whose text has been emitted.
    read_offset: usize,
}

impl<'t> TextStream<'t> {
    /// An empty stream over `tokenizer`.
    pub fn new(tokenizer: &'t QwenTokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Every token pushed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Adds `token`; returns the new text it completes, if any (special tokens make none).
    pub fn push(&mut self, token: u32) -> Result<Option<String>> {
        self.tokens.push(token);
        let window = &self.tokens[self.prefix_offset..];
        let before = self
            .tokenizer
            .decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let now = self.tokenizer.decode(window)?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(delta) = now.strip_prefix(before.as_str()) else {
            // The window's earlier text changed (a decoder merging across tokens): emit
            // nothing now, the next token decodes the window again.
            return Ok(None);
        };
        let delta = delta.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        Ok(Some(delta))
    }
}
