//! Who is behind a connection: GetConnectionUnixUser, GetConnectionUnixProcessID,
//! GetConnectionCredentials and the LSM look-ups, for a name or the bus itself.

use super::*;
use crate::bus::error::{DriverError, ErrorName};

/// Resolves the name argument of the GetConnection* methods: None means the bus itself.
pub(in crate::bus) fn connection_arg(
    bus: &Bus,
    r: &mut Reader<'_>,
    what: &str,
) -> Result<Option<PeerId>, Failure> {
    let name = read_s(r)?;
    if name == DBUS_NAME {
        return Ok(None);
    }
    bus.owner_of(name).map(Some).ok_or_else(|| {
        DriverError::new(
            ErrorName::NameHasNoOwner,
            format!("Could not get {what} of name '{name}': no such name"),
        )
    })
}

pub(super) fn get_unix_user(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let uid = match connection_arg(bus, &mut r.clone(), "UID")? {
        None => Some(bus.settings.uid),
        Some(p) => bus.peers.get(&p).and_then(|p| p.creds.uid),
    };
    let name = read_s(r)?;
    match uid {
        Some(uid) => Ok(Some((compose::body_u(uid), "u"))),
        None => Err(DriverError::new(
            ErrorName::Failed,
            format!("Could not determine UID for '{name}'"),
        )),
    }
}

pub(super) fn get_unix_process_id(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let pid = match connection_arg(bus, &mut r.clone(), "PID")? {
        None => Some(bus.settings.pid),
        Some(p) => bus.peers.get(&p).and_then(|p| p.creds.pid),
    };
    let name = read_s(r)?;
    match pid {
        Some(pid) => Ok(Some((compose::body_u(pid), "u"))),
        None => Err(DriverError::new(
            ErrorName::UnixProcessIdUnknown,
            format!("Could not determine PID for '{name}'"),
        )),
    }
}

pub(super) fn get_adt_audit_session_data(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    connection_arg(bus, &mut r.clone(), "audit session data")?;
    let name = read_s(r)?;
    Err(DriverError::new(
        ErrorName::AdtAuditDataUnknown,
        format!("Could not determine audit session data for '{name}'"),
    ))
}

pub(super) fn get_selinux_context(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    connection_arg(bus, &mut r.clone(), "security context")?;
    let name = read_s(r)?;
    Err(DriverError::new(
        ErrorName::SELinuxSecurityContextUnknown,
        format!("Could not determine security context for '{name}'"),
    ))
}

pub(super) fn get_connection_credentials(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let (uid, pid, groups) = match connection_arg(bus, r, "credentials")? {
        None => (Some(bus.settings.uid), Some(bus.settings.pid), Vec::new()),
        Some(p) => bus.peers.get(&p).map_or((None, None, Vec::new()), |p| {
            (p.creds.uid, p.creds.pid, p.creds.groups.clone())
        }),
    };
    // dbus-daemon's order: ProcessID, UnixUserID, UnixGroupIDs.
    let mut w = compose::writer();
    let a = w.begin_array(8);
    for (key, value) in [("ProcessID", pid), ("UnixUserID", uid)] {
        if let Some(v) = value {
            w.align(8);
            w.string(key);
            w.signature(b"u");
            w.u32(v);
        }
    }
    if !groups.is_empty() {
        w.align(8);
        w.string("UnixGroupIDs");
        w.signature(b"au");
        let g = w.begin_array(4);
        for gid in groups {
            w.u32(gid);
        }
        w.end_array(g);
    }
    w.end_array(a);
    Ok(Some((w.into_vec(), "a{sv}")))
}
