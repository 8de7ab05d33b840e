#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpfs::testing::fuzzing::block_map(data));
