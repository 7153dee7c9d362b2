//! ImageBuild validation on any YAML: the strict manifest check, the typed
//! read and the controller's validation (which plans the Dockerfile) end
//! in a verdict, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slimforge::api::ImageBuild;
use slimforge::controller::{Settings, reconcile};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let _ = slimforge::plan::PlanRequest::from_text(text).map(|r| r.plan());
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return;
    };
    let Ok(object) = serde_json::to_value(&value) else {
        return;
    };
    let errors = slimforge::schema::image_build_errors(&object);
    let Ok(ib) = serde_json::from_value::<ImageBuild>(object) else {
        return;
    };
    if errors.is_empty() {
        let _ = reconcile::validate(&ib, &Settings::default(), None);
    }
});
