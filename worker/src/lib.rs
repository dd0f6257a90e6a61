//! The vidx worker.

pub mod evidence;
