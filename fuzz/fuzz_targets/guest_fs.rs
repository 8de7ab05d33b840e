#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // A panic inside a guest parser is contained by rpfs (its filesystem then reads as
        // damaged), so only a panic on any other thread is a finding.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some("rpfs-guest") {
                abort(info);
            }
        }));
    },
    |data: &[u8]| rpfs::testing::fuzzing::guest_fs(data)
);
