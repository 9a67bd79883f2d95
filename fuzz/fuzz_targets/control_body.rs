//! Any bytes as the JSON body of `POST /v1/models`: decoding must never panic, and whatever
//! decodes must turn into placement options (or a clear error) and survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelhost_host::api::LoadRequest;

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = serde_json::from_slice::<LoadRequest>(bytes) else {
        return;
    };
    let _ = request.placement.options();
    let encoded = serde_json::to_vec(&request).expect("a decoded request encodes");
    let again: LoadRequest = serde_json::from_slice(&encoded).expect("an encoded request decodes");
    assert_eq!(serde_json::to_vec(&again).unwrap(), encoded);
});
