//! `stigmer_handshake._core.TaskToken`: a task token's decoded identity and fingerprint, never its bytes.

use pyo3::prelude::*;

use crate::py::args::bytes_arg;
use crate::token::{fingerprint, TaskToken};

/// Python view of a task token: the decoded identity and fingerprint, never the bytes.
#[pyclass(name = "TaskToken", module = "stigmer_handshake._core", frozen)]
pub struct PyTaskToken(pub TaskToken);

#[pymethods]
impl PyTaskToken {
    #[new]
    fn new(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let bytes = bytes_arg(data, "token")?;
        Ok(Self(TaskToken::parse(&bytes)?))
    }
    #[getter]
    fn namespace_id(&self) -> &str {
        &self.0.namespace_id
    }
    #[getter]
    fn workflow_id(&self) -> &str {
        &self.0.workflow_id
    }
    /// Whether the token is a standalone activity's (started by a client, no workflow): then
    /// `workflow_id` is empty and `run_id` is the activity's own run.
    #[getter]
    fn standalone(&self) -> bool {
        self.0.is_standalone()
    }
    #[getter]
    fn run_id(&self) -> &str {
        &self.0.run_id
    }
    #[getter]
    fn scheduled_event_id(&self) -> i64 {
        self.0.scheduled_event_id
    }
    #[getter]
    fn attempt(&self) -> i32 {
        self.0.attempt
    }
    #[getter]
    fn activity_id(&self) -> &str {
        &self.0.activity_id
    }
    #[getter]
    fn workflow_type(&self) -> &str {
        &self.0.workflow_type
    }
    #[getter]
    fn activity_type(&self) -> &str {
        &self.0.activity_type
    }
    #[getter]
    fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
    fn __repr__(&self) -> String {
        format!(
            "TaskToken({}, workflow_id={:?}, activity_id={:?}, attempt={})",
            self.0.fingerprint(),
            self.0.workflow_id,
            self.0.activity_id,
            self.0.attempt
        )
    }
    fn __str__(&self) -> String {
        self.0.to_string()
    }
    fn _repr_html_(&self) -> String {
        let t = &self.0;
        crate::html::record(
            &format!("TaskToken {}", t.fingerprint()),
            &[
                ("namespace id", Some(t.namespace_id.clone())),
                ("workflow id", Some(t.workflow_id.clone())),
                ("run id", Some(t.run_id.clone())),
                ("activity id", Some(t.activity_id.clone())),
                ("activity type", Some(t.activity_type.clone())),
                ("attempt", Some(t.attempt.to_string())),
                ("scheduled event id", Some(t.scheduled_event_id.to_string())),
            ],
        )
    }
}

/// The fingerprint of token bytes, without validating them (for logging what was refused).
#[pyfunction]
pub fn fingerprint_bytes(data: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(fingerprint(&bytes_arg(data, "token")?))
}
