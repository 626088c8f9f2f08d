//! Any bytes handed in as a spec, a status or payloads: the core's decoders, status edits and progress
//! summaries either work or return a typed error; nothing panics.
#![no_main]

use _core::store::{check_spec, edit_status, progress_json, temporal_workflow_id};
use _core::vocabulary::{Kind, Phase};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [Kind::Agent, Kind::Workflow] {
        let _ = check_spec(kind, data);
        let _ = progress_json(kind, data);
        if let Ok(edited) = edit_status(kind, data, |s| {
            s.set_phase(Phase::InProgress);
            s.set_token(data.to_vec());
            s.set_cancel_requested(true);
        }) {
            // What the core wrote back decodes again.
            edit_status(kind, &edited, |_| {}).expect("an edited status decodes");
        }
    }
    let _ = temporal_workflow_id(data);
    let _ = _core::temporal::decode_payloads(Some(data));
});
