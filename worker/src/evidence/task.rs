//! What the worker asks the model: the Open-o3 Video prompts, the default indexing question,
//! free-form and multiple-choice questions, and moderation policies with their verdict logic.
//!
//! A [`QuestionPlan`] is the list of questions asked of every segment. Its [`QuestionPlan::hash`] covers everything
//! that changes the model's input (system prompt, question texts and kinds, policy), so an index
//! entry written under one hash is never mistaken for the answers to another task.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use vidx_model::prompt::OPEN_O3_GROUNDED_SYSTEM_PROMPT;

use super::parse::ParsedOutput;
use super::{Error, Result};

/// Appended to a multiple-choice question.
pub const MULTIPLE_CHOICE_SUFFIX: &str =
    "Only output the correct option in the <answer> </answer> section.";

/// The default indexing question: what is in the segment, grounded.
pub const DEFAULT_INDEX_QUESTION: &str = "Describe this video segment for a search index. Identify the main objects, the people, the actions they perform and any text shown on screen. Ground every object, person and text you mention with its bounding box and the time you see it. In the answer, give a concise description that names the main objects, people, actions and on-screen text.";

/// Question id of the default indexing question.
pub const INDEX_QUESTION_ID: &str = "index";

/// What kind of question this is, which decides how its prompt is built and its answer read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QuestionKind {
    /// The default indexing question.
    Index,
    /// A free-form question.
    FreeForm,
    /// A multiple-choice question; the prompt gets [`MULTIPLE_CHOICE_SUFFIX`].
    MultipleChoice,
    /// The question of a moderation category.
    Moderation {
        /// The category's name.
        category: String,
    },
}

impl QuestionKind {
    /// Short label used in tables: `index`, `free_form`, `multiple_choice`, `moderation`.
    pub fn label(&self) -> &'static str {
        match self {
            QuestionKind::Index => "index",
            QuestionKind::FreeForm => "free_form",
            QuestionKind::MultipleChoice => "multiple_choice",
            QuestionKind::Moderation { .. } => "moderation",
        }
    }
}

/// One question asked of every segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Stable id within the task: letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// How the prompt is built and the answer read.
    #[serde(flatten)]
    pub kind: QuestionKind,
    /// The question as written by the user.
    pub text: String,
}

impl Question {
    /// The user-turn text sent to the model after the frames.
    pub fn prompt_text(&self) -> String {
        match self.kind {
            QuestionKind::MultipleChoice => {
                format!("{} {MULTIPLE_CHOICE_SUFFIX}", self.text.trim_end())
            }
            _ => self.text.clone(),
        }
    }
}

pub use vidx_core::policy::{Category, ModerationPolicy, Severity, answer_means};

impl From<vidx_core::policy::PolicyError> for Error {
    fn from(error: vidx_core::policy::PolicyError) -> Self {
        Error::InvalidPolicy(error.0)
    }
}

/// The verdict of one moderation category on one answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The category's name.
    pub category: String,
    /// The category's severity.
    pub severity: Severity,
    /// Whether the segment is flagged.
    pub flagged: bool,
    /// Whether the answer matched the category's flagged answer.
    pub answer_matched: bool,
    /// How many grounded claims the output carried.
    pub grounded_claims: usize,
    /// With a `min_confidence`, how many grounded claims reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confident_claims: Option<usize>,
    /// Why, in a few words.
    pub reason: String,
}

/// Decides a category's verdict from a parsed output before any claim is verified (every
/// grounded claim counts as unverified): see [`verdict_of`].
pub fn verdict(category: &Category, parsed: &ParsedOutput) -> Verdict {
    let grounded: Vec<Option<f32>> = parsed.grounded_claims().map(|_| None).collect();
    verdict_of(category, parsed.answer.as_deref(), &grounded)
}

/// Decides a category's verdict from the answer text and the confidences of the grounded claims
/// (`None` for a claim not verified): flagged when the answer means the flagged answer and enough
/// grounded claims count. Without `min_confidence` every grounded claim counts and at least
/// `min_grounded_claims` are needed; with it only claims verified at or above it count, and at
/// least `max(min_grounded_claims, 1)` are needed, so a threshold always has something to act on.
pub fn verdict_of(category: &Category, answer: Option<&str>, grounded: &[Option<f32>]) -> Verdict {
    let grounded_claims = grounded.len();
    let answer_matched =
        answer.is_some_and(|answer| answer_means(answer, &category.flagged_answer));
    let (counted, minimum, what) = match category.min_confidence {
        None => (
            grounded_claims,
            category.min_grounded_claims.unwrap_or(0) as usize,
            "grounded claims".to_owned(),
        ),
        Some(threshold) => (
            grounded
                .iter()
                .filter(|confidence| confidence.is_some_and(|value| value >= threshold))
                .count(),
            category.min_grounded_claims.unwrap_or(0).max(1) as usize,
            format!("grounded claims with confidence at least {threshold}"),
        ),
    };
    let (flagged, reason) = match (answer_matched, counted >= minimum) {
        (false, _) if answer.is_none() => (false, "no answer".to_owned()),
        (false, _) => (false, "answer does not match".to_owned()),
        (true, false) => (
            false,
            format!("answer matches but only {counted} of {minimum} {what}"),
        ),
        (true, true) => (true, "answer matches".to_owned()),
    };
    Verdict {
        category: category.name.clone(),
        severity: category.severity,
        flagged,
        answer_matched,
        grounded_claims,
        confident_claims: category.min_confidence.map(|_| counted),
        reason,
    }
}

/// The questions asked of every segment of a pass, and the moderation policy they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionPlan {
    /// Human-readable name, e.g. `index` or `moderation`.
    pub name: String,
    /// Questions, in the order asked.
    pub questions: Vec<Question>,
    /// The policy, for moderation tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ModerationPolicy>,
    /// Whether every claim is verified by asking the model about its crop (its `confidence`).
    /// Part of the hash: a verified document is not the same answer as an unverified one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

impl QuestionPlan {
    /// The default indexing task: one grounded description per segment.
    pub fn index() -> Self {
        Self {
            name: "index".into(),
            questions: vec![Question {
                id: INDEX_QUESTION_ID.into(),
                kind: QuestionKind::Index,
                text: DEFAULT_INDEX_QUESTION.into(),
            }],
            policy: None,
            verify: false,
        }
    }

    /// A task of free-form questions, ids `q1`, `q2`, ...
    pub fn free_form(questions: &[&str]) -> Result<Self> {
        Self::from_questions("questions", questions, QuestionKind::FreeForm)
    }

    /// A task of multiple-choice questions (options written in the question), ids `q1`, `q2`, ...
    pub fn multiple_choice(questions: &[&str]) -> Result<Self> {
        Self::from_questions("multiple_choice", questions, QuestionKind::MultipleChoice)
    }

    fn from_questions(name: &str, questions: &[&str], kind: QuestionKind) -> Result<Self> {
        if questions.is_empty() || questions.iter().any(|question| question.trim().is_empty()) {
            return Err(Error::InvalidTask("every question must have text".into()));
        }
        let questions = questions
            .iter()
            .enumerate()
            .map(|(index, text)| Question {
                id: format!("q{}", index + 1),
                kind: kind.clone(),
                text: text.trim().to_owned(),
            })
            .collect();
        Ok(Self {
            name: name.into(),
            questions,
            policy: None,
            verify: false,
        })
    }

    /// A moderation task: one question per category, id = category name.
    pub fn moderation(policy: ModerationPolicy) -> Result<Self> {
        policy.validate()?;
        let questions = policy
            .categories
            .iter()
            .map(|category| Question {
                id: category.name.clone(),
                kind: QuestionKind::Moderation {
                    category: category.name.clone(),
                },
                text: category.question.trim().to_owned(),
            })
            .collect();
        Ok(Self {
            name: "moderation".into(),
            questions,
            policy: Some(policy),
            verify: false,
        })
    }

    /// The indexing question followed by one question per moderation category, so one pass (and
    /// one encoding of each segment's frames) serves both.
    pub fn index_and_moderation(policy: ModerationPolicy) -> Result<Self> {
        let mut task = Self::moderation(policy)?;
        if task.question(INDEX_QUESTION_ID).is_some() {
            return Err(Error::InvalidTask(format!(
                "category name {INDEX_QUESTION_ID:?} is reserved for the indexing question"
            )));
        }
        task.questions.insert(0, Self::index().questions.remove(0));
        task.name = "index_and_moderation".into();
        Ok(task)
    }

    /// The same task with claim verification on or off.
    pub fn with_verification(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// The question with this id.
    pub fn question(&self, id: &str) -> Option<&Question> {
        self.questions.iter().find(|question| question.id == id)
    }

    /// The moderation category behind a question, if any.
    pub fn category_for(&self, question: &Question) -> Option<&Category> {
        let QuestionKind::Moderation { category } = &question.kind else {
            return None;
        };
        self.policy
            .as_ref()?
            .categories
            .iter()
            .find(|candidate| &candidate.name == category)
    }

    /// Hex SHA-256 over the system prompt, the task and its policy, as canonical JSON. Any change to
    /// what the model is asked changes the hash, and so the key the answers are stored under.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"vidx.task/v1\n");
        hasher.update(OPEN_O3_GROUNDED_SYSTEM_PROMPT.as_bytes());
        hasher.update(b"\n");
        // Serialising a struct of strings and enums cannot fail.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hasher.update(&canonical);
        hex(&hasher.finalize())
    }
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::parse::{ParseContext, parse_output};
    use super::*;

    const POLICY: &str = "
categories:
  - name: weapons
    question: Is anyone holding a weapon? Answer yes or no.
    flagged_answer: 'yes'
    severity: high
    min_grounded_claims: 1
  - name: smoking
    question: Is anyone smoking?
    flagged_answer: 'Yes'
    severity: low
";

    #[test]
    fn system_prompt_is_the_trained_one() {
        assert!(
            OPEN_O3_GROUNDED_SYSTEM_PROMPT
                .starts_with("A conversation between user and assistant.")
        );
        assert!(
            OPEN_O3_GROUNDED_SYSTEM_PROMPT.contains(
                "`<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`"
            )
        );
        assert!(
            OPEN_O3_GROUNDED_SYSTEM_PROMPT.ends_with("tags like <obj>, <box>, <t> are not needed.")
        );
    }

    #[test]
    fn multiple_choice_prompt_gets_suffix() {
        let task =
            QuestionPlan::multiple_choice(&["What is the man doing? (A) running (B) sitting"])
                .unwrap();
        assert_eq!(
            task.questions[0].prompt_text(),
            "What is the man doing? (A) running (B) sitting Only output the correct option in the <answer> </answer> section."
        );
        let task = QuestionPlan::free_form(&["Where is the dog?"]).unwrap();
        assert_eq!(task.questions[0].prompt_text(), "Where is the dog?");
        assert!(QuestionPlan::free_form(&[" "]).is_err());
    }

    #[test]
    fn policy_parses_and_builds_task() {
        let policy = ModerationPolicy::from_yaml(POLICY).unwrap();
        assert_eq!(policy.categories.len(), 2);
        assert_eq!(policy.categories[0].severity, Severity::High);
        assert_eq!(policy.categories[1].min_grounded_claims, None);
        let task = QuestionPlan::moderation(policy).unwrap();
        assert_eq!(task.questions[1].id, "smoking");
        let category = task.category_for(&task.questions[0]).unwrap();
        assert_eq!(category.name, "weapons");
    }

    #[test]
    fn verdicts_follow_answer_and_grounding() {
        let policy = ModerationPolicy::from_yaml(POLICY).unwrap();
        let weapons = &policy.categories[0];
        let smoking = &policy.categories[1];
        let context = ParseContext::new(448, 252, Some(30.0));
        let grounded = parse_output(
            "<think>A <obj>knife</obj><box>[10,10,50,60]</box>at<t>3.0</t>s in his hand.</think><answer>Yes.</answer>",
            &context,
        );
        let ungrounded = parse_output(
            "<think>I think there is a knife.</think><answer>yes</answer>",
            &context,
        );
        let negative = parse_output(
            "<think>Nothing.</think><answer>No, nobody is.</answer>",
            &context,
        );
        let no_answer = parse_output("<think>Nothing.", &context);

        assert!(verdict(weapons, &grounded).flagged);
        let verdict_ungrounded = verdict(weapons, &ungrounded);
        assert!(!verdict_ungrounded.flagged && verdict_ungrounded.answer_matched);
        assert!(verdict_ungrounded.reason.contains("only 0 of 1"));
        assert!(verdict(smoking, &ungrounded).flagged);
        assert!(!verdict(smoking, &negative).flagged);
        assert_eq!(verdict(smoking, &no_answer).reason, "no answer");
    }

    #[test]
    fn index_and_moderation_share_a_task() {
        let policy = ModerationPolicy::from_yaml(POLICY).unwrap();
        let task = QuestionPlan::index_and_moderation(policy).unwrap();
        let ids: Vec<&str> = task
            .questions
            .iter()
            .map(|question| question.id.as_str())
            .collect();
        assert_eq!(ids, vec!["index", "weapons", "smoking"]);
        assert!(task.category_for(&task.questions[0]).is_none());
        assert_eq!(
            task.category_for(&task.questions[2]).unwrap().severity,
            Severity::Low
        );
        let reserved = ModerationPolicy::from_yaml(
            "categories:\n  - {name: index, question: q, flagged_answer: 'yes', severity: low}\n",
        )
        .unwrap();
        assert!(QuestionPlan::index_and_moderation(reserved).is_err());
    }

    #[test]
    fn task_hash_changes_with_questions() {
        let index = QuestionPlan::index();
        assert_eq!(index.hash(), QuestionPlan::index().hash());
        assert_eq!(index.hash().len(), 64);
        let other = QuestionPlan::free_form(&["Where is the dog?"]).unwrap();
        assert_ne!(index.hash(), other.hash());
        let mut changed = QuestionPlan::index();
        changed.questions[0].text.push('!');
        assert_ne!(index.hash(), changed.hash());
    }
}
