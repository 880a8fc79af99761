//! The API's error type and its one mapping to HTTP (H12): every failure a handler can meet
//! becomes a status, a stable `code` and, where one field is to blame, that field.

use std::time::Duration;

use keel_model::{ErrorBody, ValidationError};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// Everything an API request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A value broke a rule of the model.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// The request is malformed (not JSON, wrong shape, bad query).
    #[error("{message}")]
    BadRequest {
        /// What was wrong.
        message: String,
        /// The field, when known.
        field: Option<String>,
    },
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource or route.
    #[error("{0}")]
    NotFound(String),
    /// The method is not allowed on this route.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// The resource changed since the client read it, or already exists.
    #[error("{message}")]
    Conflict {
        /// Stable code: `version_conflict` or `already_exists`.
        code: &'static str,
        /// What conflicted and what to do.
        message: String,
    },
    /// The history asked for is gone.
    #[error("{0}")]
    Gone(String),
    /// Uploaded bytes do not match the declared checksum.
    #[error("{0}")]
    Checksum(String),
    #[error("the request body is too large: JSON bodies take at most {} bytes, image chunks at most {} bytes", .0, crate::api::MAX_CHUNK)]
    /// The body is too large (the limit for JSON bodies).
    TooLarge(u64),
    /// Too many failed logins.
    #[error("too many failed logins; retry in {} s", .0.as_secs())]
    RateLimited(Duration),
    /// No leader or no quorum right now.
    #[error("{0}")]
    NoQuorum(String),
    /// The node is not a cluster member yet.
    #[error("{0}")]
    NotReady(String),
    /// A failure that is the server's fault.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A bad request naming `field`.
    pub fn bad(message: impl Into<String>, field: Option<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field,
        }
    }

    /// Status, code, field and Retry-After seconds for this error.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<String>, Option<u64>) {
        match self {
            ApiError::Invalid(v) => (
                StatusCode::BAD_REQUEST,
                "invalid_field",
                (!v.field.is_empty()).then(|| v.field.clone()),
                None,
            ),
            ApiError::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "bad_request", field.clone(), None)
            }
            ApiError::Unauthenticated(_) => {
                (StatusCode::UNAUTHORIZED, "unauthenticated", None, None)
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None, None),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                None,
                None,
            ),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code, None, None),
            ApiError::Gone(_) => (StatusCode::GONE, "compacted", None, None),
            ApiError::Checksum(_) => (StatusCode::BAD_REQUEST, "checksum_mismatch", None, None),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", None, None),
            ApiError::RateLimited(d) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                None,
                Some(d.as_secs().max(1)),
            ),
            ApiError::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum", None, Some(1)),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", None, Some(2)),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None, None),
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field, retry) = self.parts();
        let message = match &self {
            ApiError::Invalid(v) => v.message.clone(),
            other => other.to_string(),
        };
        let body = ErrorBody::new(code, message, field);
        let mut resp = warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if let Some(secs) = retry {
            if let Ok(v) = warp::http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut()
                    .insert(warp::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl warp::reject::Reject for ApiError {}
