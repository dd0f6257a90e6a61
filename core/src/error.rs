//! The error vocabulary of the coordinator's API, and its one mapping to and from gRPC status
//! codes.
//!
//! The in-process coordinator and the gRPC client return the same variants for the same cause:
//! the server turns an error into a status here ([`From<Error> for Status`]), and the client turns
//! the status back into the variant it came from ([`From<Status> for Error`]). A stale lease
//! travels as `ABORTED` (the code gRPC reserves for concurrency conflicts) with the job id and its
//! current state in metadata, so a worker tells it apart from every other refusal without
//! reading messages.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::domain::JobState;

/// Metadata key naming the vidx error kind on a status (`stale_lease`).
const KIND_KEY: &str = "vidx-error";
/// Metadata key holding the job id of a stale lease.
const JOB_KEY: &str = "vidx-job-id";
/// Metadata key holding the job's current state for a stale lease.
const STATE_KEY: &str = "vidx-job-state";

/// Everything a caller of the coordinator can be told went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something malformed; the message says what.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A pass or job the caller named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The lease id does not match the job's current lease: another worker holds it now, or the
    /// lease expired and the job moved on. The caller must drop the job.
    #[error("stale lease for job {job_id}: the job is {state} under another lease")]
    StaleLease {
        /// The job.
        job_id: String,
        /// The job's current state.
        state: JobState,
    },
    /// The request is well formed but the pass is not in a state that allows it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The request carried no valid token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A source, destination or manifest entry lies outside the prefixes the coordinator allows.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The coordinator's job store (or another service it needs) failed or could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An object store failed or is misconfigured.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Stored or received data could not be decoded: a bug or a foreign writer.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The coordinator could not be reached, or the connection broke mid-call.
    #[error("transport: {0}")]
    Transport(String),
    /// A status this vocabulary has no variant for (a proxy's, or a newer server's).
    #[error("{code:?}: {message}")]
    Remote {
        /// The status code.
        code: Code,
        /// The status message.
        message: String,
    },
}

/// `Result` with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidArgument`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::StaleLease { .. } => "stale_lease",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Unavailable(_) => "unavailable",
            Error::ObjectStore(_) => "object_store",
            Error::Corrupt(_) => "corrupt",
            Error::Transport(_) => "transport",
            Error::Remote { .. } => "remote",
        }
    }

    /// Whether trying the same call again later could succeed: the coordinator or its store
    /// could not be reached, the call timed out or was refused for load, or the connection broke
    /// mid-call (which tonic reports as `UNKNOWN` or `CANCELLED` with a transport message).
    /// Workers retry these with backoff while their lease lasts; everything else is an answer.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Transport(_) => true,
            Error::Remote { code, message } => match code {
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => true,
                Code::Unknown | Code::Cancelled => is_broken_connection(message),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether the coordinator fenced the call off because the lease is no longer the job's.
    pub fn is_stale_lease(&self) -> bool {
        matches!(self, Error::StaleLease { .. })
    }

    /// The message without the variant's prefix: what travels in a status.
    fn detail(&self) -> String {
        match self {
            Error::InvalidArgument(message)
            | Error::NotFound(message)
            | Error::FailedPrecondition(message)
            | Error::Unauthenticated(message)
            | Error::PermissionDenied(message)
            | Error::Unavailable(message)
            | Error::Corrupt(message)
            | Error::Transport(message) => message.clone(),
            Error::Remote { message, .. } => message.clone(),
            Error::StaleLease { .. } | Error::ObjectStore(_) => self.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let detail = error.detail();
        match error {
            Error::InvalidArgument(_) => Status::invalid_argument(detail),
            Error::NotFound(_) => Status::not_found(detail),
            Error::StaleLease { job_id, state } => {
                let mut status = Status::aborted(detail);
                let metadata = status.metadata_mut();
                metadata.insert(KIND_KEY, MetadataValue::from_static("stale_lease"));
                if let Ok(value) = MetadataValue::try_from(job_id.as_str()) {
                    metadata.insert(JOB_KEY, value);
                }
                metadata.insert(STATE_KEY, MetadataValue::from_static(state.as_str()));
                status
            }
            Error::FailedPrecondition(_) => Status::failed_precondition(detail),
            Error::Unauthenticated(_) => Status::unauthenticated(detail),
            Error::PermissionDenied(_) => Status::permission_denied(detail),
            Error::Unavailable(_) | Error::Transport(_) | Error::ObjectStore(_) => {
                Status::unavailable(detail)
            }
            Error::Corrupt(_) => Status::internal(detail),
            Error::Remote { code, .. } => Status::new(code, detail),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::Aborted if metadata_str(&status, KIND_KEY) == Some("stale_lease") => {
                let job_id = metadata_str(&status, JOB_KEY)
                    .unwrap_or_default()
                    .to_owned();
                match metadata_str(&status, STATE_KEY).and_then(JobState::parse) {
                    Some(state) => Error::StaleLease { job_id, state },
                    None => Error::Corrupt(format!(
                        "stale-lease status for job {job_id} without a job state: {message}"
                    )),
                }
            }
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::Internal => Error::Corrupt(message),
            code => Error::Remote { code, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Error::Transport(error.to_string())
    }
}

/// Whether a status message is one tonic or hyper gives a call whose connection broke, rather
/// than one a server chose to send.
fn is_broken_connection(message: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "transport error",
        "connection",
        "broken pipe",
        "h2 protocol error",
        "stream closed",
        "operation was canceled",
        "timed out",
        "error reading a body",
    ];
    let message = message.to_ascii_lowercase();
    SIGNS.iter().any(|sign| message.contains(sign))
}

fn metadata_str<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status
        .metadata()
        .get(key)
        .and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(error: Error) -> Error {
        Error::from(Status::from(error))
    }

    #[test]
    fn every_variant_survives_the_wire_as_itself() {
        let cases = [
            Error::invalid("fps 0 is out of range"),
            Error::NotFound("pass p".into()),
            Error::StaleLease {
                job_id: "p.3".into(),
                state: JobState::Pending,
            },
            Error::FailedPrecondition("pass p is cancelled".into()),
            Error::Unauthenticated("no token".into()),
            Error::PermissionDenied("s3://other/ is not allowed".into()),
            Error::Unavailable("job store: connection refused".into()),
            Error::Corrupt("record p.3".into()),
        ];
        for error in cases {
            let before = error.to_string();
            let label = error.label();
            let after = round_trip(error);
            assert_eq!((after.label(), after.to_string()), (label, before));
        }
    }

    #[test]
    fn a_stale_lease_is_told_apart_from_a_failed_precondition() {
        let stale = round_trip(Error::StaleLease {
            job_id: "p.7".into(),
            state: JobState::Leased,
        });
        assert!(stale.is_stale_lease());
        assert!(matches!(
            &stale,
            Error::StaleLease { job_id, state: JobState::Leased } if job_id == "p.7"
        ));
        let refused = round_trip(Error::FailedPrecondition("pass is cancelled".into()));
        assert!(!refused.is_stale_lease());
        // An ABORTED from something that is not vidx is not a stale lease either.
        let foreign = Error::from(Status::aborted("proxy gave up"));
        assert!(!foreign.is_stale_lease());
        assert_eq!(foreign.label(), "remote");
    }

    #[test]
    fn only_unreachable_services_are_transient() {
        assert!(round_trip(Error::Unavailable("redis down".into())).is_transient());
        assert!(Error::Transport("connection reset".into()).is_transient());
        assert!(Error::from(Status::deadline_exceeded("slow")).is_transient());
        assert!(Error::from(Status::resource_exhausted("too many calls")).is_transient());
        assert!(Error::from(Status::unknown("transport error")).is_transient());
        assert!(Error::from(Status::unknown("h2 protocol error: connection reset")).is_transient());
        assert!(Error::from(Status::cancelled("operation was canceled")).is_transient());
        // An UNKNOWN a server chose to send is an answer, not a broken connection.
        assert!(!Error::from(Status::unknown("handler panicked")).is_transient());
        assert!(!Error::from(Status::aborted("proxy gave up")).is_transient());
        assert!(!round_trip(Error::invalid("bad")).is_transient());
        assert!(
            !round_trip(Error::StaleLease {
                job_id: "p.1".into(),
                state: JobState::Done,
            })
            .is_transient()
        );
    }
}
