//! The configuration parser and the policy compiler, on any text: a bad file is an error
//! naming a line, never a panic.
#![no_main]
use busd_policy::{Accounts, CompiledPolicy, Config};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Users and groups without NSS: a few names resolve, the rest do not.
struct FewAccounts;

impl Accounts for FewAccounts {
    fn user_id(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "alice" => Some(1000),
            _ => None,
        }
    }
    fn group_id(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "netdev" => Some(108),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: <include> and <includedir> of relative paths find
    // nothing instead of reading the machine's files.
    let path = Path::new("/nonexistent/busd-fuzz/bus.conf");
    match Config::from_str_at(text, path) {
        Ok(config) => {
            let _ = CompiledPolicy::compile(&config, &FewAccounts);
        }
        Err(e) => {
            let said = e.to_string();
            assert!(!said.is_empty());
        }
    }
});
