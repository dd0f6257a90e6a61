//! The vidx worker: leases jobs from a coordinator, processes each on a blocking thread (read,
//! probe, sample, reason, write evidence), keeps its lease alive with heartbeats, and reports the
//! outcome. [`runtime`] is the loop; the work itself sits behind [`runtime::Processor`].

pub mod evidence;
pub mod media;
pub mod pipeline;
pub mod runtime;
