//! The error names of the D-Bus specification and of dbus-daemon (`dbus-protocol.h`) that
//! busd sends: the one place each is spelled.

/// A standard D-Bus error name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorName {
    Failed,
    NoMemory,
    ServiceUnknown,
    NameHasNoOwner,
    NoReply,
    AccessDenied,
    LimitsExceeded,
    InvalidArgs,
    UnknownMethod,
    UnknownInterface,
    UnknownProperty,
    PropertyReadOnly,
    NotSupported,
    TimedOut,
    MatchRuleInvalid,
    MatchRuleNotFound,
    UnixProcessIdUnknown,
    AdtAuditDataUnknown,
    SELinuxSecurityContextUnknown,
    SpawnExecFailed,
    SpawnChildExited,
    SpawnChildSignaled,
    SpawnFileInvalid,
    SpawnConfigInvalid,
    SpawnSetupFailed,
    SpawnServiceInvalid,
    SpawnServiceNotFound,
    SpawnPermissionsInvalid,
}

impl ErrorName {
    /// Every name, in declaration order.
    pub const ALL: [ErrorName; 28] = {
        use ErrorName::*;
        [
            Failed,
            NoMemory,
            ServiceUnknown,
            NameHasNoOwner,
            NoReply,
            AccessDenied,
            LimitsExceeded,
            InvalidArgs,
            UnknownMethod,
            UnknownInterface,
            UnknownProperty,
            PropertyReadOnly,
            NotSupported,
            TimedOut,
            MatchRuleInvalid,
            MatchRuleNotFound,
            UnixProcessIdUnknown,
            AdtAuditDataUnknown,
            SELinuxSecurityContextUnknown,
            SpawnExecFailed,
            SpawnChildExited,
            SpawnChildSignaled,
            SpawnFileInvalid,
            SpawnConfigInvalid,
            SpawnSetupFailed,
            SpawnServiceInvalid,
            SpawnServiceNotFound,
            SpawnPermissionsInvalid,
        ]
    };

    /// The name as it travels in an ERROR message's ERROR_NAME field.
    pub const fn as_str(self) -> &'static str {
        use ErrorName::*;
        match self {
            Failed => "org.freedesktop.DBus.Error.Failed",
            NoMemory => "org.freedesktop.DBus.Error.NoMemory",
            ServiceUnknown => "org.freedesktop.DBus.Error.ServiceUnknown",
            NameHasNoOwner => "org.freedesktop.DBus.Error.NameHasNoOwner",
            NoReply => "org.freedesktop.DBus.Error.NoReply",
            AccessDenied => "org.freedesktop.DBus.Error.AccessDenied",
            LimitsExceeded => "org.freedesktop.DBus.Error.LimitsExceeded",
            InvalidArgs => "org.freedesktop.DBus.Error.InvalidArgs",
            UnknownMethod => "org.freedesktop.DBus.Error.UnknownMethod",
            UnknownInterface => "org.freedesktop.DBus.Error.UnknownInterface",
            UnknownProperty => "org.freedesktop.DBus.Error.UnknownProperty",
            PropertyReadOnly => "org.freedesktop.DBus.Error.PropertyReadOnly",
            NotSupported => "org.freedesktop.DBus.Error.NotSupported",
            TimedOut => "org.freedesktop.DBus.Error.TimedOut",
            MatchRuleInvalid => "org.freedesktop.DBus.Error.MatchRuleInvalid",
            MatchRuleNotFound => "org.freedesktop.DBus.Error.MatchRuleNotFound",
            UnixProcessIdUnknown => "org.freedesktop.DBus.Error.UnixProcessIdUnknown",
            AdtAuditDataUnknown => "org.freedesktop.DBus.Error.AdtAuditDataUnknown",
            SELinuxSecurityContextUnknown => {
                "org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown"
            }
            SpawnExecFailed => "org.freedesktop.DBus.Error.Spawn.ExecFailed",
            SpawnChildExited => "org.freedesktop.DBus.Error.Spawn.ChildExited",
            SpawnChildSignaled => "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
            SpawnFileInvalid => "org.freedesktop.DBus.Error.Spawn.FileInvalid",
            SpawnConfigInvalid => "org.freedesktop.DBus.Error.Spawn.ConfigInvalid",
            SpawnSetupFailed => "org.freedesktop.DBus.Error.Spawn.SetupFailed",
            SpawnServiceInvalid => "org.freedesktop.DBus.Error.Spawn.ServiceInvalid",
            SpawnServiceNotFound => "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
            SpawnPermissionsInvalid => "org.freedesktop.DBus.Error.Spawn.PermissionsInvalid",
        }
    }
}

impl std::fmt::Display for ErrorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_valid_error_name() {
        for n in ErrorName::ALL {
            assert!(crate::names::is_valid_error_name(n.as_str()), "{n}");
            assert!(n.as_str().starts_with("org.freedesktop.DBus.Error."));
        }
        // ALL lists each name once.
        let mut names: Vec<&str> = ErrorName::ALL.iter().map(|n| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorName::ALL.len());
    }
}
