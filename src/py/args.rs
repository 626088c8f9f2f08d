//! Taking arguments from Python: bytes-like values, execution ids, seconds. A wrong one raises
//! `InvalidInput` naming it.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use crate::core::check_execution_id;
use crate::errors::{Error, Result};
use crate::py::errors::InvalidInput;

/// Read a bytes-like argument, or raise `InvalidInput` naming it.
pub fn bytes_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = value.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if value.cast::<PyMemoryView>().is_ok() {
        let bytes = value.call_method0("tobytes")?;
        return Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec());
    }
    Err(InvalidInput::new_err(format!(
        "{what} must be bytes, not {}",
        value.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
    )))
}

pub fn optional_bytes(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<u8>>> {
    value.filter(|v| !v.is_none()).map(|v| bytes_arg(v, what)).transpose()
}

/// An execution id from Python, checked as it is taken (`check_execution_id`).
pub struct ExecutionId(pub String);

impl std::ops::Deref for ExecutionId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for ExecutionId {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let id: String = obj.extract().map_err(|_| {
            // A str that is not valid Unicode text (a lone surrogate): Rust and the stores cannot hold it.
            let why = if obj.is_instance_of::<pyo3::types::PyString>() {
                "an execution id must be valid Unicode text (it holds a lone surrogate)".to_owned()
            } else {
                let type_name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                format!("an execution id must be a str, not {type_name}")
            };
            PyErr::from(Error::InvalidArgument(why))
        })?;
        check_execution_id(&id)?;
        Ok(Self(id))
    }
}

pub fn seconds_to_ms(seconds: f64, what: &str) -> Result<i64> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(Error::InvalidArgument(format!("{what} must be a positive number of seconds, not {seconds}")));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok((seconds * 1000.0).round() as i64)
}

/// How long to wait, from seconds: zero or more, finite.
pub fn patience(seconds: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| Error::InvalidArgument(format!("{what} must be a non-negative number of seconds, not {seconds}")))
}

/// A positive number of seconds as a duration.
pub fn duration(seconds: f64, what: &str) -> Result<Duration> {
    Ok(Duration::from_millis(u64::try_from(seconds_to_ms(seconds, what)?).unwrap_or(0)))
}
