#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isthmus_proxy::fuzzing::telemetry_headers(data));
