//! `org.freedesktop.DBus.Properties` and `Introspectable` on the bus object: the
//! `Features` and `Interfaces` properties, and the introspection XML built from the
//! driver's method table.

use super::*;
use crate::bus::error::{DriverError, ErrorName};

/// Properties of `org.freedesktop.DBus`: (name, value as `as`).
fn property(bus: &Bus, name: &str) -> Option<Vec<&'static str>> {
    match name {
        "Features" => {
            let mut f = vec!["ActivatableServicesChanged", "HeaderFiltering"];
            if bus.settings.systemd_activation {
                f.push("SystemdActivation");
            }
            Some(f)
        }
        "Interfaces" => Some(
            INTERFACES
                .iter()
                .filter(|i| i.interesting)
                .map(|i| i.name)
                .collect(),
        ),
        _ => None,
    }
}

fn check_interface(iface: &str) -> Result<(), Failure> {
    if iface == DBUS_INTERFACE {
        Ok(())
    } else {
        Err(DriverError::new(
            ErrorName::UnknownInterface,
            format!("Interface \"{iface}\" not found"),
        ))
    }
}

pub(super) fn properties_get(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let iface = read_s(r)?;
    let name = read_s(r)?;
    check_interface(iface)?;
    let value = property(bus, name).ok_or_else(|| {
        DriverError::new(
            ErrorName::UnknownProperty,
            format!("Property \"{iface}.{name}\" not found"),
        )
    })?;
    let mut w = compose::writer();
    w.signature(b"as");
    w.string_array(value);
    Ok(Some((w.into_vec(), "v")))
}

pub(super) fn properties_get_all(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let iface = read_s(r)?;
    check_interface(iface)?;
    let mut w = compose::writer();
    let a = w.begin_array(8);
    for name in ["Features", "Interfaces"] {
        w.align(8);
        w.string(name);
        w.signature(b"as");
        w.string_array(property(bus, name).unwrap_or_default());
    }
    w.end_array(a);
    Ok(Some((w.into_vec(), "a{sv}")))
}

pub(super) fn properties_set(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let iface = read_s(r)?;
    let name = read_s(r)?;
    check_interface(iface)?;
    if property(bus, name).is_none() {
        return Err(DriverError::new(
            ErrorName::UnknownProperty,
            format!("Property \"{iface}.{name}\" not found"),
        ));
    }
    Err(DriverError::new(
        ErrorName::PropertyReadOnly,
        format!("Property '{iface}.{name}' cannot be set"),
    ))
}

pub(super) fn introspect(
    _: &mut Bus,
    _: PeerId,
    msg: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    Ok(Some((
        compose::body_s(&introspection_xml(msg.path().unwrap_or("/"))),
        "s",
    )))
}

/// The driver's introspection data at `path` (also what `busd --introspect` prints).
pub fn introspection_xml(path: &str) -> String {
    let canonical = path == DBUS_PATH;
    let mut xml = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n\"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
    );
    for iface in INTERFACES {
        if !(canonical || iface.any_path) {
            continue;
        }
        xml.push_str(&format!("  <interface name=\"{}\">\n", iface.name));
        for m in iface.methods {
            if !(canonical || m.any_path) {
                continue;
            }
            xml.push_str(&format!("    <method name=\"{}\">\n", m.name));
            for (dir, sig) in [("in", m.args), ("out", m.out)] {
                let mut p = 0;
                while p < sig.len() {
                    let end =
                        valid::complete_type_end(sig.as_bytes(), p, 0, 0).unwrap_or(sig.len());
                    xml.push_str(&format!(
                        "      <arg direction=\"{dir}\" type=\"{}\"/>\n",
                        &sig[p..end]
                    ));
                    p = end;
                }
            }
            xml.push_str("    </method>\n");
        }
        xml.push_str(iface.signals_xml);
        xml.push_str("  </interface>\n");
    }
    if path == "/" {
        xml.push_str("  <node name=\"org/freedesktop/DBus\"/>\n");
    }
    xml.push_str("</node>\n");
    xml
}
