//! The coordinator's error type. It is the API's vocabulary ([`vidx_core::Error`]) plus what
//! only the coordinator can run into (Redis); callers outside the coordinator only ever see the
//! core error, through [`From<Error> for vidx_core::Error`], which is also the one road to a gRPC
//! status.

use vidx_core::domain::JobState;

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
    /// A service the coordinator needs, other than Redis, failed; or serving itself failed.
    #[error("unavailable: {0}")]
    Unavailable(String),
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
            Error::Unavailable(_) => "unavailable",
        }
    }

    /// Whether trying the same call again later could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis(error) => {
                error.is_io_error() || error.is_timeout() || error.is_connection_dropped()
            }
            Error::Unavailable(_) => true,
            _ => false,
        }
    }

    /// Whether this is a fault of the coordinator or its store, worth a warning in the log
    /// (as opposed to a caller's mistake, which the caller is told about).
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            Error::Redis(_) | Error::Corrupt(_) | Error::Unavailable(_)
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}

impl From<Error> for vidx_core::Error {
    fn from(error: Error) -> Self {
        use vidx_core::Error as Core;
        match error {
            Error::InvalidArgument(message) => Core::InvalidArgument(message),
            Error::NotFound(message) => Core::NotFound(message),
            Error::StaleLease { job_id, state } => Core::StaleLease { job_id, state },
            Error::FailedPrecondition(message) => Core::FailedPrecondition(message),
            Error::Unauthenticated(message) => Core::Unauthenticated(message),
            Error::PermissionDenied(message) => Core::PermissionDenied(message),
            redis @ Error::Redis(_) => Core::Unavailable(redis.to_string()),
            Error::ObjectStore(error) => Core::ObjectStore(error),
            Error::Corrupt(message) => Core::Corrupt(message),
            Error::Unavailable(message) => Core::Unavailable(message),
        }
    }
}

impl From<vidx_core::Error> for Error {
    fn from(error: vidx_core::Error) -> Self {
        use vidx_core::Error as Core;
        match error {
            Core::InvalidArgument(message) => Error::InvalidArgument(message),
            Core::NotFound(message) => Error::NotFound(message),
            Core::StaleLease { job_id, state } => Error::StaleLease { job_id, state },
            Core::FailedPrecondition(message) => Error::FailedPrecondition(message),
            Core::Unauthenticated(message) => Error::Unauthenticated(message),
            Core::PermissionDenied(message) => Error::PermissionDenied(message),
            Core::ObjectStore(error) => Error::ObjectStore(error),
            Core::Corrupt(message) => Error::Corrupt(message),
            other @ (Core::Unavailable(_) | Core::Transport(_) | Core::Remote { .. }) => {
                Error::Unavailable(other.to_string())
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        vidx_core::Error::from(error).into()
    }
}
