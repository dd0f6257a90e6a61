//! The vidx worker: reads videos from object storage, samples frames, runs grounded reasoning
//! and writes evidence.

pub mod media;
