//! What an answer must be, checked before each of its tokens is sampled: one JSON object
//! ([`crate::json_mode`]) or JSON that matches a schema ([`crate::json_schema`]).

use crate::json_mode::JsonMode;
use crate::json_schema::SchemaConstraint;

/// A sequence's answer constraint.
#[derive(Debug)]
pub(crate) enum AnswerConstraint {
    JsonObject(JsonMode),
    JsonSchema(Box<SchemaConstraint>),
}

impl AnswerConstraint {
    /// Sets the logits of tokens that cannot come next to −∞ (`end_ids` only where the answer may
    /// end); returns whether any token is left, or why the constraint failed.
    pub(crate) fn mask(&mut self, logits: &mut [f32], end_ids: &[u32]) -> Result<bool, String> {
        match self {
            Self::JsonObject(json) => Ok(json.mask(logits, end_ids)),
            Self::JsonSchema(schema) => schema.mask(logits, end_ids),
        }
    }

    /// Records a sampled answer token (not an end id).
    pub(crate) fn push(&mut self, id: u32) -> Result<(), String> {
        match self {
            Self::JsonObject(json) => {
                json.push(id);
                Ok(())
            }
            Self::JsonSchema(schema) => schema.push(id),
        }
    }
}
