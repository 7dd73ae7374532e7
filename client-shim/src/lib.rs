//! busd-shim: plain zbus connections that use busd's fast path when asked to.
//!
//! ```no_run
//! # async fn f() -> zbus::Result<()> {
//! // Instead of zbus::connection::Builder::session()?:
//! let conn = busd_shim::session().await?.build().await?;
//! // ...then ordinary zbus code: proxies, serve_at, signals, names.
//! # Ok(()) }
//! ```
//!
//! The fast path is used when it is asked for, by the address key `fastpath=1`
//! (`unix:path=/run/user/1000/bus,fastpath=1`, which zbus's own parser ignores) or, when the
//! address says nothing, by the environment variable `BUSD_FASTPATH=1`; and when the bus
//! offers it (busd's `org.freedesktop.busd.FastPath1.Join`). Otherwise the connection is
//! plain zbus: against dbus-daemon or dbus-broker, or with `fastpath=0`, nothing changes.
//!
//! On the fast path, messages to other members go straight to their sockets (broadcasts to
//! the members whose interest summary may match, filtered again by the kernel), and
//! everything else goes to the daemon, which keeps names, policy and activation. What the
//! application sees is the same: senders, destinations, bodies, fds, per-sender order.
//! `docs/fastpath-protocol.md` describes the protocol.
//!
//! Layout:
//! - `socket`: the zbus socket halves: Join after Hello, then each message parsed once
//!   and handed to the member; the stream merged with the member socket.
//! - `join`: the `Join` call and the member made from its answer.
//! - `member`: a joined connection, its one state, sending and receiving.
//! - `table`: the routing table as the member reads it.
//! - `route`: the routing decision, a pure function of message and table.
//! - `frame`: the frame a message travels in (routing header, SENDER, memfd).
//! - `fanout`: `sendmsg`, and broadcasts in one `sendmmsg`.
//! - `backlog`: per-receiver backlogs and each runtime's service that drains them.
//! - `causal`: the progress memory: sends numbered and completed, waits before sending.
//! - `calls`: waiting direct calls (NoReply), calls via the daemon, errors made for zbus.
//! - `receive`: the receive check, a pure function of frame, table and rules.
//! - `rules`: the connection's match rules, as the bus accepted them.
//! - `figures`: what the shim counts, and its publication for the daemon.

mod backlog;
mod batch;
mod calls;
mod causal;
mod fanout;
mod figures;
mod frame;
mod join;
mod member;
mod receive;
mod returns;
mod route;
mod rules;
mod socket;
mod table;

use std::sync::Arc;

pub use figures::Counters;
pub use table::DEPARTED_GRACE;

/// busd's interface on the bus object.
pub use busd_match::protocol::INTERFACE as FASTPATH_INTERFACE;
/// The environment variable that asks for the fast path when the address does not say.
pub const ENV: &str = "BUSD_FASTPATH";

/// A connection builder for the session bus (`DBUS_SESSION_BUS_ADDRESS`).
pub async fn session() -> zbus::Result<zbus::connection::Builder<'static>> {
    let address = std::env::var("DBUS_SESSION_BUS_ADDRESS")
        .map_err(|_| zbus::Error::Address("DBUS_SESSION_BUS_ADDRESS is not set".into()))?;
    builder(&address).await
}

/// A connection builder for the bus at `address`: on the fast path when asked and offered,
/// plain zbus otherwise. Configure it as any zbus builder, then `build()`.
pub async fn builder(address: &str) -> zbus::Result<zbus::connection::Builder<'static>> {
    let Some((target, backlog)) = fast_target(address, std::env::var(ENV).ok().as_deref()) else {
        return zbus::connection::Builder::address(address);
    };
    let stream = match target {
        Target::Path(p) => std::os::unix::net::UnixStream::connect(p)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            std::os::unix::net::UnixStream::connect_addr(&addr)?
        }
    };
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let counters = Arc::new(Counters::default());
    figures::register(&counters);
    let (read, write) = socket::split(stream, counters, backlog);
    let split: zbus::connection::socket::BoxedSplit =
        zbus::connection::socket::Split::new(Box::new(read) as _, Box::new(write) as _);
    Ok(zbus::connection::Builder::socket(split))
}

/// The fast path's figures for a connection this crate built; None for other connections
/// and for those not on the fast path.
pub fn stats(conn: &zbus::Connection) -> Option<Arc<Counters>> {
    figures::find(conn.server_guid().as_str(), conn.unique_name()?.as_str())
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

/// The socket to connect to when the fast path is asked for, and the bound of each
/// receiver's backlog (`fastpath_backlog=BYTES`, 64 MiB by default): the address must be a
/// single `unix:path=` (or `unix:abstract=`) entry. `env` is `BUSD_FASTPATH`.
fn fast_target(address: &str, env: Option<&str>) -> Option<(Target, usize)> {
    if address.contains(';') {
        return None;
    }
    let rest = address.strip_prefix("unix:")?;
    let mut path = None;
    let mut asked = env == Some("1");
    let mut backlog = backlog::DEFAULT_BACKLOG_BYTES;
    for kv in rest.split(',') {
        let (k, v) = kv.split_once('=')?;
        match k {
            "path" => path = Some(Target::Path(busd_wire::address::unescape(v)?.into())),
            "abstract" => {
                path = Some(Target::Abstract(
                    busd_wire::address::unescape(v)?.into_bytes(),
                ))
            }
            "fastpath" => asked = v == "1",
            "fastpath_backlog" => backlog = v.parse().ok()?,
            _ => {}
        }
    }
    if asked {
        path.map(|p| (p, backlog))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_comes_from_the_address_then_the_environment() {
        let p = |a: &str, env| match fast_target(a, env) {
            Some((Target::Path(p), _)) => Some(p.display().to_string()),
            Some((Target::Abstract(n), _)) => Some(format!("@{}", String::from_utf8(n).unwrap())),
            None => None,
        };
        assert_eq!(
            p("unix:path=/run/user/1000/bus,fastpath=1", None).as_deref(),
            Some("/run/user/1000/bus")
        );
        assert_eq!(p("unix:path=/run/user/1000/bus", None), None);
        assert_eq!(
            p("unix:path=/tmp/a%20b,guid=0123", Some("1")).as_deref(),
            Some("/tmp/a b")
        );
        assert_eq!(p("unix:path=/tmp/x,fastpath=0", Some("1")), None);
        assert_eq!(p("tcp:host=localhost,port=1,fastpath=1", None), None);
        assert_eq!(p("unix:path=/a,fastpath=1;unix:path=/b", None), None);
        assert_eq!(p("unix:tmpdir=/tmp,fastpath=1", None), None);
        assert_eq!(
            p("unix:abstract=bus,fastpath=1", None).as_deref(),
            Some("@bus")
        );
    }

    #[test]
    fn the_backlog_bound_comes_from_the_address() {
        let bound = |a: &str| fast_target(a, None).map(|(_, b)| b);
        assert_eq!(
            bound("unix:path=/b,fastpath=1"),
            Some(backlog::DEFAULT_BACKLOG_BYTES)
        );
        assert_eq!(
            bound("unix:path=/b,fastpath=1,fastpath_backlog=65536"),
            Some(65536)
        );
        assert_eq!(bound("unix:path=/b,fastpath=1,fastpath_backlog=lots"), None);
    }
}
