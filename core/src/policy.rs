//! Moderation policies: the YAML a user writes, its types, and the one function that checks it.
//!
//! The coordinator checks a pass's policy at submission ([`crate::domain::PassSpec::validate`]
//! calls [`ModerationPolicy::from_yaml`]), `vidx submit` runs the same check before it sends
//! anything, and the worker parses the same types to ask the categories' questions. Every error
//! names the field at fault as a path (`categories[1].flagged_answer`) or the YAML line.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Most grounded claims a category may require.
pub const MAX_MIN_GROUNDED_CLAIMS: u32 = 1000;

/// A policy that failed to parse or validate; the message names the field or line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// How bad a moderation finding is; ordered from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Needs review.
    Medium,
    /// Needs prompt review.
    High,
    /// Act now.
    Critical,
}

/// One moderation category of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Name, unique in the policy: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The question asked of each segment.
    pub question: String,
    /// The answer that means "flagged", e.g. `yes`; compared case- and punctuation-insensitively.
    pub flagged_answer: String,
    /// How bad a flag in this category is.
    pub severity: Severity,
    /// A flag needs at least this many grounded claims (box and time); none means the answer alone
    /// decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_grounded_claims: Option<u32>,
    /// Only grounded claims whose self-verified confidence is at least this, in `[0, 1]`, count
    /// towards a flag, and a flag then needs at least one such claim. Needs verification on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f32>,
}

/// A moderation policy: a YAML file of categories.
///
/// ```yaml
/// categories:
///   - name: weapons
///     question: Is anyone holding a weapon? Answer yes or no.
///     flagged_answer: "yes"
///     severity: high
///     min_grounded_claims: 1
///     min_confidence: 0.6
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationPolicy {
    /// The categories, in the order they are asked.
    pub categories: Vec<Category>,
}

impl ModerationPolicy {
    /// Parses and validates a policy from YAML; errors name the field or the line at fault.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let policy: ModerationPolicy = serde_yaml_ng::from_str(text).map_err(|error| {
            let place = error
                .location()
                .map(|at| format!("line {} column {}: ", at.line(), at.column()));
            PolicyError(format!("{}{error}", place.unwrap_or_default()))
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks names, questions, answers and thresholds; the error names the first bad field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.categories.is_empty() {
            return Err(PolicyError(
                "categories: the policy has no categories".into(),
            ));
        }
        let mut names = HashSet::new();
        for (position, category) in self.categories.iter().enumerate() {
            let field = |name: &str| format!("categories[{position}].{name}");
            if !is_identifier(&category.name) {
                return Err(PolicyError(format!(
                    "{} {:?}: must be 1 to 64 letters, digits, '-', '_' or '.'",
                    field("name"),
                    category.name
                )));
            }
            if !names.insert(category.name.as_str()) {
                return Err(PolicyError(format!(
                    "{} {:?}: is used twice",
                    field("name"),
                    category.name
                )));
            }
            if category.question.trim().is_empty() {
                return Err(PolicyError(format!("{}: is empty", field("question"))));
            }
            if normalize_answer(&category.flagged_answer).is_empty() {
                return Err(PolicyError(format!(
                    "{} {:?}: has no letters or digits",
                    field("flagged_answer"),
                    category.flagged_answer
                )));
            }
            if let Some(minimum) = category.min_grounded_claims
                && minimum > MAX_MIN_GROUNDED_CLAIMS
            {
                return Err(PolicyError(format!(
                    "{}: must be at most {MAX_MIN_GROUNDED_CLAIMS}, got {minimum}",
                    field("min_grounded_claims")
                )));
            }
            if let Some(minimum) = category.min_confidence
                && !(0.0..=1.0).contains(&minimum)
            {
                return Err(PolicyError(format!(
                    "{}: must be in [0, 1], got {minimum}",
                    field("min_confidence")
                )));
            }
        }
        Ok(())
    }

    /// The first category with a `min_confidence`, by name.
    pub fn first_min_confidence(&self) -> Option<(usize, &Category)> {
        self.categories
            .iter()
            .enumerate()
            .find(|(_, category)| category.min_confidence.is_some())
    }
}

/// Whether `answer` means `expected`: equal after normalising, or starting with it as a whole word
/// (`Yes, a knife is visible` means `yes`; `Yesterday` does not). Options like `(A)` or `A.` compare
/// as `a`.
pub fn answer_means(answer: &str, expected: &str) -> bool {
    let answer = normalize_answer(answer);
    let expected = normalize_answer(expected);
    if expected.is_empty() {
        return false;
    }
    answer == expected
        || answer
            .strip_prefix(&expected)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// Lowercases and reduces to words of letters and digits separated by single spaces.
pub fn normalize_answer(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` is a name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_errors_name_the_field() {
        let cases = [
            ("categories: []", "categories: the policy has no categories"),
            (
                "categories:\n  - name: a\n    question: q\n    flagged_answer: 'yes'\n    severity: huge\n",
                "line 5",
            ),
            (
                "categories:\n  - name: a\n    question: q\n    flagged_answer: 'yes'\n    severity: low\n    colour: red\n",
                "unknown field `colour`",
            ),
            (
                "categories:\n  - name: a\n    question: q\n    severity: low\n",
                "missing field `flagged_answer`",
            ),
            (
                "categories:\n  - name: a b\n    question: q\n    flagged_answer: 'yes'\n    severity: low\n",
                "categories[0].name \"a b\": must be",
            ),
            (
                "categories:\n  - {name: a, question: q, flagged_answer: 'yes', severity: low}\n  - {name: a, question: r, flagged_answer: 'no', severity: low}\n",
                "categories[1].name \"a\": is used twice",
            ),
            (
                "categories:\n  - {name: a, question: ' ', flagged_answer: 'yes', severity: low}\n",
                "categories[0].question: is empty",
            ),
            (
                "categories:\n  - {name: a, question: q, flagged_answer: '?!', severity: low}\n",
                "categories[0].flagged_answer \"?!\": has no letters",
            ),
            (
                "categories:\n  - {name: a, question: q, flagged_answer: 'yes', severity: low, min_grounded_claims: 5000}\n",
                "categories[0].min_grounded_claims: must be at most 1000",
            ),
            (
                "categories:\n  - {name: a, question: q, flagged_answer: 'yes', severity: low}\n  - {name: b, question: q, flagged_answer: 'yes', severity: low, min_confidence: 1.5}\n",
                "categories[1].min_confidence: must be in [0, 1], got 1.5",
            ),
            (
                "categories:\n  - {name: a, question: q, flagged_answer: 'yes', severity: low, min_confidence: .nan}\n",
                "categories[0].min_confidence: must be in [0, 1]",
            ),
            ("categories: [", "line"),
        ];
        for (yaml, expected) in cases {
            let message = ModerationPolicy::from_yaml(yaml).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{yaml:?}: {message:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn a_good_policy_parses_with_its_thresholds() {
        let policy = ModerationPolicy::from_yaml(
            "categories:\n  - {name: weapons, question: Any weapon?, flagged_answer: 'yes', severity: high, min_confidence: 0.75}\n  - {name: smoking, question: Anyone smoking?, flagged_answer: 'yes', severity: low}\n",
        )
        .unwrap();
        assert_eq!(policy.categories[0].min_confidence, Some(0.75));
        assert_eq!(policy.categories[1].min_confidence, None);
        assert_eq!(policy.first_min_confidence().unwrap().0, 0);
    }

    #[test]
    fn answer_matching() {
        assert!(answer_means("Yes.", "yes"));
        assert!(answer_means("YES, a knife is visible", "yes"));
        assert!(!answer_means("Yesterday he left", "yes"));
        assert!(answer_means("(A) running", "A"));
        assert!(answer_means("A.", "(a)"));
        assert!(!answer_means("B", "A"));
        assert!(!answer_means("yes", "?"));
    }
}
