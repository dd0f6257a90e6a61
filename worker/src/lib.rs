//! The vidx worker.
