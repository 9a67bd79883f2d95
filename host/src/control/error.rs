//! API errors: one place maps every failure to an HTTP status and a stable code.

use hyper::StatusCode;

use crate::api::{ErrorBody, ErrorDetail};
use crate::model_file::OpenError;
use crate::placement::PlacementError;
use crate::registry::{LoadError, ScaleError, UnloadError};

/// An error response: status, a stable code for scripts, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    /// A 400 about one field of the request.
    pub fn invalid(param: &str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_owned()),
            ..ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    /// OpenAI's error type for the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind().to_owned(),
                param: self.param.clone(),
                code: self.code.to_owned(),
            },
        }
    }
}

/// The message with its whole source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = s.source();
    }
    message
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> ApiError {
        use std::io::ErrorKind as Io;
        let message = chain(&e);
        let (status, code) = match &e {
            LoadError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            LoadError::RelativePath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            LoadError::NotAllowed { .. } => (StatusCode::FORBIDDEN, "path_not_allowed"),
            LoadError::Duplicate(_) => (StatusCode::CONFLICT, "model_exists"),
            LoadError::Placement(PlacementError::BadDevice { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid_device")
            }
            LoadError::Placement(PlacementError::BadOption(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_placement")
            }
            LoadError::Placement(PlacementError::Cpu(_) | PlacementError::DeviceQuery(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "device_unavailable")
            }
            LoadError::Plan(_) | LoadError::NoManifest(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "plan_failed")
            }
            LoadError::WorkersWithoutDevices => (StatusCode::BAD_REQUEST, "invalid_placement"),
            LoadError::Open(open) => match open.as_ref() {
                OpenError::Io { source, .. } if source.kind() == Io::NotFound => {
                    (StatusCode::NOT_FOUND, "file_not_found")
                }
                OpenError::Io { source, .. } if source.kind() == Io::PermissionDenied => {
                    (StatusCode::FORBIDDEN, "permission_denied")
                }
                OpenError::Io { .. } | OpenError::Copy { .. } | OpenError::Cancelled { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "io_error")
                }
                OpenError::NotAFile { .. } => (StatusCode::BAD_REQUEST, "not_a_file"),
                OpenError::Parse { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_gguf"),
                OpenError::UnnamedShard { .. } | OpenError::Model(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model")
                }
            },
        };
        ApiError::new(status, code, message)
    }
}

impl From<ScaleError> for ApiError {
    fn from(e: ScaleError) -> ApiError {
        let (status, code) = match &e {
            ScaleError::NotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            ScaleError::NotReady { .. } => (StatusCode::CONFLICT, "model_not_ready"),
            ScaleError::NotSpawned(_) | ScaleError::NotWholeReplicas(_) => {
                (StatusCode::CONFLICT, "not_scalable")
            }
            ScaleError::TooMany { .. }
            | ScaleError::Placement(PlacementError::BadDevice { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid_scale")
            }
            ScaleError::Placement(_) => (StatusCode::UNPROCESSABLE_ENTITY, "device_unavailable"),
            ScaleError::Plan(_) => (StatusCode::UNPROCESSABLE_ENTITY, "plan_failed"),
            ScaleError::Worker(_) | ScaleError::Thread(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "worker_start_failed")
            }
        };
        ApiError::new(status, code, chain(&e))
    }
}

impl From<UnloadError> for ApiError {
    fn from(e: UnloadError) -> ApiError {
        let (status, code) = match &e {
            UnloadError::NotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            UnloadError::InUse { .. } => (StatusCode::CONFLICT, "model_in_use"),
        };
        ApiError::new(status, code, e.to_string())
    }
}
