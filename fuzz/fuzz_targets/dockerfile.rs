//! The Dockerfile frontend and planner on any bytes: parsing, variable
//! expansion and planning must end in a plan or an error, never a panic,
//! a hang or unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slimforge::plan::PlanRequest;

fuzz_target!(|bytes: &[u8]| {
    // The first line may carry build args (`A=b C=d`) and a target, so the
    // planner's ARG paths are reached too.
    let text = String::from_utf8_lossy(bytes);
    let (head, dockerfile) = text.split_once('\n').unwrap_or(("", &text));
    let mut request = PlanRequest {
        dockerfile: dockerfile.to_string(),
        ..PlanRequest::default()
    };
    for word in head.split_whitespace() {
        match word.strip_prefix("--target=") {
            Some(target) => request.target = Some(target.to_string()),
            None => {
                let _ = request.add_build_args([word]);
            }
        }
    }
    if let Ok(plan) = request.plan() {
        // A plan must survive the trip to the pods.
        let _ = serde_json::to_vec(&plan).expect("a plan serialises");
    }
    let _ = slimforge::dockerfile::parse_bytes(bytes);
});
