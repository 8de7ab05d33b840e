#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpfs::testing::fuzzing::frame_pack(data));
