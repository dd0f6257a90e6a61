//! The vidx coordinator.
