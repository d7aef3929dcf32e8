//! Every route's request body (and the audit query strings and path key id): the first byte
//! picks which, the rest is the body, parsed and checked as the handler does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovra_server::routes::body::{RequestInput, parse_request};

/// The server's default batch limit.
const MAX_BATCH_ITEMS: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let what = RequestInput::ALL[usize::from(which) % RequestInput::ALL.len()];
    if let Err(e) = parse_request(what, body, MAX_BATCH_ITEMS) {
        // A parse failure is always a client error, never a 5xx.
        assert!(e.status.is_client_error(), "{what:?}: {}", e.status);
    }
});
