//! Any bytes as a frame body of either side: decoding fails cleanly or yields a
//! message, never panics, and never takes more memory than its budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::limit::{MAX_DECODED_LEN, decoded_cost};
use sluice_proto::{AgentMessage, ReceiverMessage, decode_body};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let flags = flags & 1;
    let _ = decode_body::<AgentMessage>(flags, body);
    assert!(decoded_cost() <= MAX_DECODED_LEN + sluice_proto::MAX_FRAME_LEN);
    let _ = decode_body::<ReceiverMessage>(flags, body);
    assert!(decoded_cost() <= MAX_DECODED_LEN + sluice_proto::MAX_FRAME_LEN);
});
