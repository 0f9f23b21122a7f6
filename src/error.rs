//! Turns core errors into Postgres ERRORs with the SQLSTATE that fits.

use gp_recovery_core::{CoreError, ErrorKind};
use pgrx::PgSqlErrorCode;

fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
    match kind {
        ErrorKind::InvalidParameter => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::Duplicate => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        ErrorKind::Unreachable => PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        ErrorKind::WrongState => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
    }
}

/// Raises `e` as an ERROR; the transaction is rolled back, so nothing the
/// statement did stays.
pub fn raise(e: CoreError) -> ! {
    pgrx::ereport!(ERROR, sqlstate(e.kind()), e.to_string());
}

/// Raises an ERROR for a failure the extension did not expect (a broken SPI
/// call, a runtime that could not start).
pub fn internal(context: &str, e: impl std::fmt::Display) -> ! {
    pgrx::ereport!(ERROR, PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{context}: {e}"));
}

/// The value of a function's argument that must not be NULL, or an ERROR
/// naming it (null_value_not_allowed): pgrx itself would panic.
pub fn required<T>(function: &str, argument: &str, value: Option<T>) -> T {
    match value {
        Some(v) => v,
        None => null_argument(function, argument),
    }
}

fn null_argument(function: &str, argument: &str) -> ! {
    pgrx::ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{function}: argument {argument} must not be NULL")
    );
}

pub trait OrRaise<T> {
    /// The value, or the ERROR that the failure maps to.
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, CoreError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::Error> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| internal("catalog access failed", e))
    }
}
