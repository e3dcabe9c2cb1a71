//! The service boundary's error type and its one exhaustive mapping to
//! `tonic::Status`. Messages of client errors are meant for the caller;
//! internal errors never leak their cause (it is logged with the request id).

use tonic::Status;

use crate::store::{Entity, StoreError};

/// Everything a links RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field breaks a validation rule; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(Entity),
    /// A unique value is taken; the message names it.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database cannot be used right now (breaker open, unreachable).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
            ServiceError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            // Typed, so the edge tells "replica up, database down" from a
            // broken replica without reading the message.
            ServiceError::Unavailable(m) => {
                shortlink_proto::errors::database_unavailable(format!("database unavailable: {m}"))
            }
            ServiceError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(what),
            StoreError::Conflict(field) => {
                ServiceError::AlreadyExists(format!("{field} is already taken"))
            }
            StoreError::InUse(m) => ServiceError::FailedPrecondition(m),
            StoreError::PageTooDeep => ServiceError::InvalidArgument(format!(
                "page too deep: a listing skips at most {} matching rows ((page - 1) * per_page); \
                 narrow the filters",
                crate::model::Page::MAX_SKIP
            )),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database call failed");
                ServiceError::Unavailable(
                    "the database cannot be reached; try again shortly".into(),
                )
            }
            StoreError::Timeout => ServiceError::Unavailable(
                "the database did not answer in time; try again shortly".into(),
            ),
            StoreError::Other(cause) => ServiceError::Internal(cause.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_variant_maps_to_its_code_without_leaking_internals() {
        let cases = [
            (
                ServiceError::InvalidArgument("x is required".into()),
                Code::InvalidArgument,
            ),
            (ServiceError::NotFound(Entity::Link), Code::NotFound),
            (
                ServiceError::AlreadyExists("short_code is already taken".into()),
                Code::AlreadyExists,
            ),
            (
                ServiceError::FailedPrecondition("link is deactivated".into()),
                Code::FailedPrecondition,
            ),
            (
                ServiceError::Unavailable("breaker open".into()),
                Code::Unavailable,
            ),
            (
                ServiceError::Internal(anyhow::anyhow!("secret dsn")),
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            let s: Status = e.into();
            assert_eq!(s.code(), code);
            assert!(!s.message().contains("secret"));
            assert_eq!(
                shortlink_proto::errors::is_database_unavailable(&s),
                code == Code::Unavailable,
                "only the database outage carries the typed detail"
            );
        }
    }

    #[test]
    fn a_page_too_deep_is_the_callers_error_and_names_the_bound() {
        let s: Status = ServiceError::from(StoreError::PageTooDeep).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("1000000"), "{}", s.message());
    }
}
