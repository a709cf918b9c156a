#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| isthmus_federation::fuzzing::discovery_importer(data));
