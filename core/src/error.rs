//! Errors of the core, with the class of SQLSTATE each one maps to at the
//! SQL edge.

use thiserror::Error;

/// The kind of failure, which the SQL layer maps to a SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad argument value (22023 invalid_parameter_value).
    InvalidParameter,
    /// The request collides with a row already in the catalog (23505 unique_violation).
    Duplicate,
    /// A segment could not be reached (08001 sqlclient_unable_to_establish_sqlconnection).
    Unreachable,
    /// The instance or catalog is not in the state the request needs
    /// (55000 object_not_in_prerequisite_state).
    WrongState,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    #[error("invalid {what} \"{value}\": {expected}")]
    InvalidValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Duplicate(String),
    #[error("segment {host}:{port} does not answer: {reason}")]
    Unreachable {
        host: String,
        port: i32,
        reason: String,
    },
    #[error("{0}")]
    WrongState(String),
}

impl CoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::InvalidValue { .. } => ErrorKind::InvalidParameter,
            CoreError::Duplicate(_) => ErrorKind::Duplicate,
            CoreError::Unreachable { .. } => ErrorKind::Unreachable,
            CoreError::WrongState(_) => ErrorKind::WrongState,
        }
    }
}
