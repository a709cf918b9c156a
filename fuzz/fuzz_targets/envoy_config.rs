#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isthmus_proxy::fuzzing::envoy_config(data));
