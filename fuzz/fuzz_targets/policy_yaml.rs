//! The policy YAML parser: any text is parsed and validated or refused, never panics, and is
//! answered within the limits of `policy::yaml_limits` (libFuzzer's `-timeout` and `-rss_limit_mb`
//! flag a document that costs more).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = agentd_control::policy::parse_document(text);
    }
});
