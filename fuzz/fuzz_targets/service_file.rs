//! `.service` file parsing (activation), on any bytes, strict (system bus) and lenient, and
//! the splitting of its Exec line into the argv busd would run.
#![no_main]
use busd::activation::{argv, service_file::parse_service};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for strict in [false, true] {
        if let Ok(entry) = parse_service(data, "org.example.Fuzz.service", strict) {
            assert!(!entry.name.is_empty());
            if let Ok(args) = argv::split(&entry.exec) {
                assert!(args.iter().all(|a| !a.contains('\0')));
            }
        }
    }
});
