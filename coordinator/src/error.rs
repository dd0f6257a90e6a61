//! The coordinator's error type, and the one place it is mapped to gRPC status codes.

use crate::domain::JobState;

/// Everything that can go wrong inside the coordinator.
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
    /// A source, destination or manifest entry lies outside the prefixes this coordinator
    /// allows (`--allow-prefix`); the message names them.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Redis failed or could not be reached.
    #[error("job store unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// An object store failed while planning.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Stored data could not be decoded: a bug or a foreign writer.
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
    /// A transport-level failure talking to another vidx service.
    #[error("transport: {0}")]
    Transport(String),
    /// An error status returned by a remote vidx service.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
}

/// `Result` with the coordinator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::StaleLease { .. } => "stale_lease",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Redis(_) => "redis",
            Error::ObjectStore(_) => "object_store",
            Error::Corrupt(_) => "corrupt",
            Error::Transport(_) => "transport",
            Error::Remote(_) => "remote",
        }
    }

    /// Whether trying the same call again later could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis(error) => {
                error.is_io_error() || error.is_timeout() || error.is_connection_dropped()
            }
            Error::Transport(_) => true,
            Error::Remote(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            _ => false,
        }
    }

    /// Whether the coordinator rejected a call because the lease is no longer the job's, locally
    /// (`StaleLease`) or over gRPC (`FAILED_PRECONDITION`).
    pub fn is_lease_rejected(&self) -> bool {
        match self {
            Error::StaleLease { .. } => true,
            Error::Remote(status) => status.code() == tonic::Code::FailedPrecondition,
            _ => false,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::StaleLease { .. } | Error::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(message)
            }
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(message),
            Error::Redis(_) | Error::Transport(_) => tonic::Status::unavailable(message),
            Error::ObjectStore(_) => tonic::Status::unavailable(message),
            Error::Corrupt(_) => tonic::Status::internal(message),
            Error::Remote(status) => status,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Remote(status)
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Error::Transport(error.to_string())
    }
}
