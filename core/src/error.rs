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
    InvalidValue { what: &'static str, value: String, expected: &'static str },
    #[error("recovery configuration line {line}: {message}")]
    Config { line: usize, message: String },
    #[error("{0}")]
    Duplicate(String),
    #[error("segment {host}:{port} does not answer: {reason}")]
    Unreachable { host: String, port: i32, reason: String },
    #[error("{0}")]
    WrongState(String),
    /// The content's acting primary cannot serve as a source.
    #[error("{0}")]
    DoubleFault(String),
}

impl CoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::InvalidValue { .. } | CoreError::Config { .. } => ErrorKind::InvalidParameter,
            CoreError::Duplicate(_) => ErrorKind::Duplicate,
            CoreError::Unreachable { .. } => ErrorKind::Unreachable,
            CoreError::WrongState(_) | CoreError::DoubleFault(_) => ErrorKind::WrongState,
        }
    }
}

/// An error with its chain of causes, "outer: inner: innermost", so that a
/// client error such as "error connecting to server" keeps its reason.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("error connecting to server")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_keeps_the_cause() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(error_chain(&e), "error connecting to server: Connection refused");
    }
}
