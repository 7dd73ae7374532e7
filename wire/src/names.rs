//! Validation of D-Bus names, paths and signatures (specification, "Valid Names").

/// Longest bus name, interface, member or error name the specification allows.
pub const MAX_NAME_LENGTH: usize = 255;

fn is_element_char(c: u8, allow_dash: bool) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || (allow_dash && c == b'-')
}

/// A bus name, unique (`:1.42`) or well-known (`org.example.Foo`).
pub fn is_valid_bus_name(s: &str) -> bool {
    validate_bus_name(s, false)
}

/// A bus-name namespace as `arg0namespace` takes it: like a bus name, but a single element
/// (`org`) is allowed.
pub fn is_valid_bus_namespace(s: &str) -> bool {
    validate_bus_name(s, true)
}

fn validate_bus_name(s: &str, namespace: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LENGTH {
        return false;
    }
    let (unique, body) = match b[0] {
        b':' => (true, &b[1..]),
        _ => (false, b),
    };
    let mut elements = 0;
    for element in body.split(|&c| c == b'.') {
        if element.is_empty() {
            return false;
        }
        if !unique && element[0].is_ascii_digit() {
            return false;
        }
        if !element.iter().all(|&c| is_element_char(c, true)) {
            return false;
        }
        elements += 1;
    }
    elements >= 2 || (namespace && elements == 1)
}

/// A unique connection name (`:1.42`).
pub fn is_unique_name(s: &str) -> bool {
    s.starts_with(':')
}

/// A valid bus name and its kind: checked once where it enters, matched on afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusName<'a> {
    /// A connection's unique name (`:1.42`).
    Unique(&'a str),
    /// A well-known name (`org.example.Foo`).
    WellKnown(&'a str),
}

impl<'a> BusName<'a> {
    /// `s` if it is a valid bus name.
    pub fn parse(s: &'a str) -> Option<BusName<'a>> {
        if !is_valid_bus_name(s) {
            None
        } else if is_unique_name(s) {
            Some(BusName::Unique(s))
        } else {
            Some(BusName::WellKnown(s))
        }
    }

    pub fn as_str(self) -> &'a str {
        match self {
            BusName::Unique(s) | BusName::WellKnown(s) => s,
        }
    }
}

/// An interface name, also the syntax of error names.
pub fn is_valid_interface(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LENGTH {
        return false;
    }
    let mut elements = 0;
    for element in b.split(|&c| c == b'.') {
        if element.is_empty() || element[0].is_ascii_digit() {
            return false;
        }
        if !element.iter().all(|&c| is_element_char(c, false)) {
            return false;
        }
        elements += 1;
    }
    elements >= 2
}

/// An error name: same syntax as an interface.
pub fn is_valid_error_name(s: &str) -> bool {
    is_valid_interface(s)
}

/// A member (method or signal) name.
pub fn is_valid_member(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LENGTH
        && !b[0].is_ascii_digit()
        && b.iter().all(|&c| is_element_char(c, false))
}

/// An object path: `/` or `/a/b_c/D0`.
pub fn is_valid_object_path(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if b.len() == 1 {
        return true;
    }
    b[1..]
        .split(|&c| c == b'/')
        .all(|element| !element.is_empty() && element.iter().all(|&c| is_element_char(c, false)))
}

/// Maximum length of a signature.
pub const MAX_SIGNATURE_LENGTH: usize = 255;
/// Maximum nesting of arrays, and separately of structs, in a signature.
pub const MAX_CONTAINER_DEPTH: u32 = 32;

/// A type signature: zero or more complete types.
pub fn is_valid_signature(sig: &[u8]) -> bool {
    if sig.len() > MAX_SIGNATURE_LENGTH {
        return false;
    }
    let mut pos = 0;
    while pos < sig.len() {
        match complete_type_end(sig, pos, 0, 0) {
            Some(end) => pos = end,
            None => return false,
        }
    }
    true
}

/// A signature holding exactly one complete type (what a VARIANT carries).
pub fn is_single_complete_type(sig: &[u8]) -> bool {
    sig.len() <= MAX_SIGNATURE_LENGTH && complete_type_end(sig, 0, 0, 0) == Some(sig.len())
}

/// Whether `c` is a basic type code (usable as a dict key).
pub fn is_basic_type(c: u8) -> bool {
    matches!(
        c,
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h' | b's' | b'o' | b'g'
    )
}

/// Returns the index just past the complete type that starts at `pos`.
pub fn complete_type_end(sig: &[u8], pos: usize, arrays: u32, structs: u32) -> Option<usize> {
    let c = *sig.get(pos)?;
    match c {
        c if is_basic_type(c) || c == b'v' => Some(pos + 1),
        b'a' => {
            if arrays >= MAX_CONTAINER_DEPTH {
                return None;
            }
            if sig.get(pos + 1) == Some(&b'{') {
                let key = *sig.get(pos + 2)?;
                if !is_basic_type(key) {
                    return None;
                }
                let end = complete_type_end(sig, pos + 3, arrays + 1, structs)?;
                (sig.get(end) == Some(&b'}')).then_some(end + 1)
            } else {
                complete_type_end(sig, pos + 1, arrays + 1, structs)
            }
        }
        b'(' => {
            if structs >= MAX_CONTAINER_DEPTH {
                return None;
            }
            let mut p = pos + 1;
            if sig.get(p) == Some(&b')') {
                return None;
            }
            while sig.get(p) != Some(&b')') {
                p = complete_type_end(sig, p, arrays, structs + 1)?;
            }
            Some(p + 1)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_names_are_sorted_into_unique_and_well_known_once_valid() {
        assert_eq!(BusName::parse(":1.42"), Some(BusName::Unique(":1.42")));
        assert_eq!(
            BusName::parse("org.example.Foo"),
            Some(BusName::WellKnown("org.example.Foo"))
        );
        for bad in ["", ":", "org", "org..x", "1org.x", ":1.4.", "org.x/y"] {
            assert_eq!(BusName::parse(bad), None, "{bad:?}");
        }
        assert_eq!(BusName::parse(":1.7").map(BusName::as_str), Some(":1.7"));
    }

    #[test]
    fn bus_names_follow_the_specification() {
        for ok in [
            ":1.0",
            ":1.42",
            "org.freedesktop.DBus",
            "a.b",
            "a-b.c_d",
            ":a.0b",
            "com.x1",
        ] {
            assert!(is_valid_bus_name(ok), "{ok}");
        }
        for bad in [
            "", "org", ".a.b", "a..b", "a.b.", "1a.b", "a.1b", "a.b!", ":1", ":", "a/b.c",
        ] {
            assert!(!is_valid_bus_name(bad), "{bad}");
        }
        assert!(!is_valid_bus_name(&format!("a.{}", "b".repeat(254))));
        assert!(is_valid_bus_namespace("org"));
        assert!(is_valid_bus_namespace("org.freedesktop"));
        assert!(!is_valid_bus_namespace("org."));
    }

    #[test]
    fn interfaces_members_and_paths() {
        assert!(is_valid_interface("org.freedesktop.DBus"));
        assert!(!is_valid_interface("org.free-desktop"));
        assert!(!is_valid_interface("org"));
        assert!(is_valid_member("Hello"));
        assert!(is_valid_member("_x9"));
        assert!(!is_valid_member("9x"));
        assert!(!is_valid_member("a.b"));
        assert!(!is_valid_member(""));
        for ok in ["/", "/a", "/a/b_c/D0"] {
            assert!(is_valid_object_path(ok), "{ok}");
        }
        for bad in ["", "a", "//", "/a/", "/a//b", "/a-b"] {
            assert!(!is_valid_object_path(bad), "{bad}");
        }
    }

    #[test]
    fn signatures() {
        for ok in ["", "s", "a{sv}", "(ii)", "aai", "a(sa{sv})", "v", "h"] {
            assert!(is_valid_signature(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a", "()", "{sv}", "a{vs}", "a{s}", "(i", "z", "a{sv", "a{ss}}",
        ] {
            assert!(!is_valid_signature(bad.as_bytes()), "{bad}");
        }
        assert!(is_valid_signature(
            "a".repeat(32)
                .as_bytes()
                .iter()
                .chain(b"i")
                .copied()
                .collect::<Vec<_>>()
                .as_slice()
        ));
        assert!(!is_valid_signature(
            "a".repeat(33)
                .as_bytes()
                .iter()
                .chain(b"i")
                .copied()
                .collect::<Vec<_>>()
                .as_slice()
        ));
        assert!(is_single_complete_type(b"a{sv}"));
        assert!(!is_single_complete_type(b"ss"));
    }
}
