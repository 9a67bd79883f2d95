//! Any bytes into the worker-protocol decoder: the preamble check, then frames until the input
//! runs out. Nothing may panic, and a frame over the cap must be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelhost_protocol::wire::{check_preamble, FrameDecoder, WireError, PREAMBLE_LEN};

fuzz_target!(|bytes: &[u8]| {
    if let Some(head) = bytes.get(..PREAMBLE_LEN) {
        let mut preamble = [0u8; PREAMBLE_LEN];
        preamble.copy_from_slice(head);
        let _ = check_preamble(&preamble);
    }
    let mut decoder = FrameDecoder::new();
    for chunk in bytes.chunks(7) {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(WireError::FrameTooLarge { .. }) => return,
                // Any other violation ends the connection; a host would drop the worker.
                Err(_) => return,
            }
        }
    }
});
