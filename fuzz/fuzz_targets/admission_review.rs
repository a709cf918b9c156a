#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isthmus_controlplane::fuzzing::admission_review(data));
