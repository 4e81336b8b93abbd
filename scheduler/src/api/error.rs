//! The API's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::raft::ProposeError;

/// Every way an API call can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or fails validation; nothing changed.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// (field path, what is wrong) for each problem.
        violations: Vec<(String, String)>,
    },
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// This node cannot accept writes; the leader may.
    #[error("this node is not the leader; try node {leader_hint}")]
    NotLeader {
        /// The leader's id if known (0: unknown).
        leader_hint: u64,
    },
    /// The request was valid but the state machine refused it.
    #[error("{0}")]
    Rejected(String),
    /// The cluster could not complete the request now; retrying may help.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// A validation error with one violation.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::Invalid { violations: vec![(field.into(), message.clone())], message }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> ApiError {
        match e {
            ProposeError::NotLeader { leader_hint } => ApiError::NotLeader { leader_hint },
            ProposeError::Dropped(why) => ApiError::Unavailable(format!("the request was not committed: {why}")),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let message = e.to_string();
        match e {
            ApiError::Invalid { violations, .. } => {
                let violations: Vec<FieldViolation> =
                    violations.into_iter().map(|(f, d)| FieldViolation::new(f, d)).collect();
                Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(violations))
            }
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::NotLeader { leader_hint } => {
                let mut s = Status::unavailable(message);
                if let Ok(v) = leader_hint.to_string().parse() {
                    s.metadata_mut().insert("baton-leader-id", v);
                }
                s
            }
            ApiError::Rejected(_) => Status::failed_precondition(message),
            ApiError::Unavailable(_) => Status::unavailable(message),
        }
    }
}
