#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpfs::testing::fuzzing::index_segment(data));
