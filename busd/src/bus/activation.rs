//! Activation in the bus core (dbus-daemon's bus/activation.c): which names can be started,
//! which starts are under way, who waits for them, and what happens when the name appears,
//! the process fails, or the time is up. Processes are started and reaped by the shell
//! ([`super::Effect::Spawn`], [`Bus::child_exited`]).

use crate::bus::error::{DriverError, ErrorName};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::logging::JOURNAL;

use super::compose::{self, DriverMessage};
use super::{Bus, Effect, PeerId, DBUS_PATH};
use crate::queue::Outgoing;
use busd_wire::message::Message;

pub const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";

/// StartServiceByName's answers.
const START_REPLY_SUCCESS: u32 = 1;
const START_REPLY_ALREADY_RUNNING: u32 = 2;

/// One `.service` file's `[D-BUS Service]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub exec: String,
    pub user: Option<String>,
    pub systemd_service: Option<String>,
    pub assumed_apparmor_label: Option<String>,
}

/// How a started process ended (before its name appeared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Exited(i32),
    Signaled(i32),
}

/// Why a name is being started.
#[derive(Debug)]
pub(super) enum Request {
    /// Auto-start: deliver this message once the name is owned (as forwarded, SENDER set).
    Auto { msg: Message, out: Outgoing },
    /// StartServiceByName: answer the call with this serial.
    Start { serial: u32 },
}

/// Someone waiting for a start.
#[derive(Debug)]
struct Waiter {
    /// Who asked (None: the bus itself, e.g. an ActivationRequest for systemd).
    peer: Option<PeerId>,
    request: Request,
}

impl Waiter {
    fn serial(&self) -> u32 {
        match &self.request {
            Request::Auto { msg, .. } => msg.serial(),
            Request::Start { serial } => *serial,
        }
    }
}

#[derive(Debug)]
struct Pending {
    waiters: Vec<Waiter>,
    deadline: Instant,
    exec: Option<String>,
    systemd_service: Option<String>,
    child: Option<u64>,
}

/// The activation registry: the activatable names and the starts under way, with who
/// waits for each. The one record of them; the bus asks it and acts on the answers.
#[derive(Debug, Default)]
pub(super) struct Activation {
    entries: HashMap<String, ServiceEntry>,
    pending: HashMap<String, Pending>,
    /// Messages waiting, over all pending starts (max_pending_service_starts).
    waiting: usize,
    next_child: u64,
    /// Requests for names no service file provided, waiting for the shell to read the
    /// service directories again ([`Effect::RescanServices`]), as dbus-daemon does before
    /// it says a name is unknown.
    unknown: Vec<(String, Waiter)>,
    /// Retrying those after the rescan: a name still missing is unknown.
    retrying: bool,
}

impl Activation {
    fn set_entries(&mut self, entries: Vec<ServiceEntry>) {
        self.entries = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
    }

    fn entry(&self, name: &str) -> Option<&ServiceEntry> {
        self.entries.get(name)
    }

    /// The activatable names, sorted.
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The earliest time a start under way gives up.
    fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Messages and calls waiting, over every start (max_pending_service_starts).
    fn waiting(&self) -> usize {
        self.waiting
    }

    /// Adds `waiter` to the start of `name` under way; gives it back if there is none.
    fn wait_for(&mut self, name: &str, waiter: Waiter) -> Option<Waiter> {
        let Some(p) = self.pending.get_mut(name) else {
            return Some(waiter);
        };
        p.waiters.push(waiter);
        self.waiting += 1;
        None
    }

    /// A new start of `name`, with its first waiter.
    fn begin(
        &mut self,
        name: &str,
        waiter: Waiter,
        deadline: Instant,
        entry: Option<&ServiceEntry>,
    ) {
        self.waiting += 1;
        self.pending.insert(
            name.to_string(),
            Pending {
                waiters: vec![waiter],
                deadline,
                exec: entry.map(|e| e.exec.clone()),
                systemd_service: entry.and_then(|e| e.systemd_service.clone()),
                child: None,
            },
        );
    }

    /// The start of `name` is over (its name appeared, or it failed): who waited.
    fn finish(&mut self, name: &str) -> Option<Vec<Waiter>> {
        let p = self.pending.remove(name)?;
        self.waiting -= p.waiters.len();
        Some(p.waiters)
    }

    /// A child id for the process that starts `name`.
    fn new_child(&mut self, name: &str) -> u64 {
        self.next_child += 1;
        let child = self.next_child;
        if let Some(p) = self.pending.get_mut(name) {
            p.child = Some(child);
        }
        child
    }

    /// The name process `child` was started for, and its command line.
    fn started_by(&self, child: u64) -> Option<(String, Option<String>)> {
        self.pending
            .iter()
            .find(|(_, p)| p.child == Some(child))
            .map(|(n, p)| (n.clone(), p.exec.clone()))
    }

    /// The other starts under way with the same command line as `name`'s, sorted.
    fn sharing_exec(&self, name: &str, exec: Option<&str>) -> Vec<String> {
        let Some(exec) = exec else {
            return Vec::new();
        };
        let mut names: Vec<String> = self
            .pending
            .iter()
            .filter(|(n, p)| *n != name && p.exec.as_deref() == Some(exec))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort_unstable();
        names
    }

    /// The starts waiting for systemd unit `unit`, sorted.
    fn for_unit(&self, unit: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.systemd_service.as_deref() == Some(unit))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort_unstable();
        names
    }

    /// The starts whose time is up at `now`, with their process if one was started,
    /// sorted by name.
    fn expired(&self, now: Instant) -> Vec<(String, Option<u64>)> {
        let mut late: Vec<(String, Option<u64>)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(n, p)| (n.clone(), p.child))
            .collect();
        late.sort_unstable();
        late
    }

    /// The StartServiceByName callers waiting for `name`.
    fn start_callers(&self, name: &str) -> Option<Vec<(PeerId, u32)>> {
        let p = self.pending.get(name)?;
        Some(
            p.waiters
                .iter()
                .filter_map(|w| match (&w.request, w.peer) {
                    (Request::Start { serial }, Some(peer)) => Some((peer, *serial)),
                    _ => None,
                })
                .collect(),
        )
    }
}

type Failure = DriverError;

/// The error dbus-daemon's setuid launch helper means by its exit code.
fn helper_exit_error(code: i32) -> Failure {
    match code {
        2 => DriverError::new(
            ErrorName::SpawnConfigInvalid,
            "Invalid configuration (missing or empty <user>?)".into(),
        ),
        3 => DriverError::new(
            ErrorName::NoMemory,
            "Launcher could not run (out of memory)".into(),
        ),
        4 => DriverError::new(
            ErrorName::SpawnSetupFailed,
            "Failed to setup environment correctly".into(),
        ),
        5 => DriverError::new(
            ErrorName::SpawnServiceInvalid,
            "Bus name is not valid or missing".into(),
        ),
        6 => DriverError::new(
            ErrorName::SpawnServiceNotFound,
            "Bus name not found in system service directory".into(),
        ),
        7 => DriverError::new(
            ErrorName::SpawnPermissionsInvalid,
            "The permission of the setuid helper is not correct".into(),
        ),
        8 => DriverError::new(
            ErrorName::SpawnPermissionsInvalid,
            "The service file is incorrect or does not have all required attributes".into(),
        ),
        9 => DriverError::new(
            ErrorName::SpawnExecFailed,
            "Cannot launch daemon, file not found or permissions invalid".into(),
        ),
        10 => DriverError::new(
            ErrorName::InvalidArgs,
            "Invalid arguments to command line".into(),
        ),
        11 => DriverError::new(
            ErrorName::SpawnChildSignaled,
            "Launched child was signaled, it probably crashed".into(),
        ),
        _ => DriverError::new(
            ErrorName::SpawnChildExited,
            format!("Launch helper exited with unknown return code {code}"),
        ),
    }
}

impl Bus {
    /// The `.service` entries the shell found (at start-up and on every reload). When
    /// `announce`, ActivatableServicesChanged is broadcast.
    pub fn set_activatable(&mut self, entries: Vec<ServiceEntry>, announce: bool) {
        self.activation.set_entries(entries);
        if announce {
            self.send_from_driver(
                None,
                DriverMessage::signal("ActivatableServicesChanged", Vec::new(), ""),
            );
        }
    }

    /// The shell read the service directories again ([`Effect::RescanServices`]): the
    /// requests that waited for it start now, or hear that their name is unknown.
    pub fn services_rescanned(&mut self, entries: Vec<ServiceEntry>) {
        self.activation.set_entries(entries);
        let unknown = std::mem::take(&mut self.activation.unknown);
        self.activation.retrying = true;
        for (name, w) in unknown {
            if w.peer.is_some_and(|p| !self.peers.contains_key(&p)) {
                continue;
            }
            let serial = w.serial();
            if let Err(e) = self.activate(w.peer, w.request, &name) {
                if let Some(peer) = w.peer {
                    self.send_from_driver(Some(peer), DriverMessage::failure(serial, &e));
                }
            }
        }
        self.activation.retrying = false;
    }

    /// Names ListActivatableNames reports (the bus's own first), sorted.
    pub(super) fn activatable_names(&self) -> Vec<&str> {
        self.activation.names()
    }

    /// The earliest time a pending start gives up.
    pub(super) fn activation_deadline(&self) -> Option<Instant> {
        self.activation.next_deadline()
    }

    /// Starts `name` for a message (`auto`: auto-start of `msg`; otherwise
    /// StartServiceByName, answered when the name appears). Errors are for the caller.
    pub(super) fn activate(
        &mut self,
        from: Option<PeerId>,
        request: Request,
        name: &str,
    ) -> Result<(), Failure> {
        let limit = self.settings.limits.max_pending_service_starts;
        if self.activation.waiting() as u64 >= limit {
            return Err(DriverError::new(ErrorName::LimitsExceeded,
                format!(
                    "The maximum number of pending activations has been reached, activation of {name} failed (max_pending_service_starts={limit})"
                ),
            ));
        }
        let entry = if self.settings.systemd_activation && name == SYSTEMD_NAME {
            // systemd needs no .service file: it connects by itself, eventually.
            None
        } else {
            match self.activation.entry(name) {
                Some(e) => Some(e.clone()),
                None if !self.activation.retrying => {
                    // Read the directories again first (a directory created since, a file
                    // added a moment ago): dbus-daemon does so before it says "unknown".
                    if self.activation.unknown.is_empty() {
                        self.effects.push(Effect::RescanServices);
                    }
                    let waiter = Waiter {
                        peer: from,
                        request,
                    };
                    self.activation.unknown.push((name.to_string(), waiter));
                    return Ok(());
                }
                None => {
                    return Err(DriverError::new(
                        ErrorName::ServiceUnknown,
                        format!("The name {name} was not provided by any .service files"),
                    ))
                }
            }
        };
        match &request {
            Request::Auto { msg, .. } => {
                if entry.is_some() && from.is_some() {
                    // As much of the security check as can be made before the service
                    // exists (the rest happens on delivery).
                    self.check_security(msg, from, None, None, false)?;
                }
            }
            Request::Start { serial } => {
                if self.owner_of(name).is_some() {
                    if let Some(peer) = from {
                        self.send_from_driver(
                            Some(peer),
                            DriverMessage::reply(
                                *serial,
                                compose::body_u(START_REPLY_ALREADY_RUNNING),
                                "u",
                            ),
                        );
                    }
                    return Ok(());
                }
            }
        }
        let waiter = Waiter {
            peer: from,
            request,
        };
        let Some(waiter) = self.activation.wait_for(name, waiter) else {
            return Ok(());
        };
        let timeout = Duration::from_millis(self.settings.limits.service_start_timeout);
        self.activation
            .begin(name, waiter, self.now + timeout, entry.as_ref());
        let requester = from.map_or_else(|| "(bus)".to_string(), |p| self.describe_peer(p));
        let started = match &entry {
            // systemd itself is missing: wait until it connects.
            None => Ok(()),
            Some(e) if self.settings.systemd_activation && e.systemd_service.is_some() => {
                self.request_from_systemd(name, e, &requester)
            }
            Some(e) => self.spawn(name, e, &requester),
        };
        if let Err(failure) = started {
            // Nothing was started: the caller gets the error, nobody else waits.
            self.activation.finish(name);
            return Err(failure);
        }
        Ok(())
    }

    fn describe_peer(&self, p: PeerId) -> String {
        let info = self
            .peers
            .get(&p)
            .map(|p| p.creds.loginfo())
            .unwrap_or_default();
        format!("'{}' ({info})", self.unique_of(p))
    }

    /// Traditional activation: run the `Exec=` line (or the setuid helper of a system bus).
    fn spawn(&mut self, name: &str, entry: &ServiceEntry, requester: &str) -> Result<(), Failure> {
        let command = match &self.settings.servicehelper {
            Some(helper) => {
                if entry.user.is_none() {
                    return Err(DriverError::new(
                        ErrorName::SpawnFileInvalid,
                        "Cannot do system-bus activation with no user\n".into(),
                    ));
                }
                format!("{helper} {name}")
            }
            None => entry.exec.clone(),
        };
        let argv = crate::activation::argv::split(&command)
            .map_err(|e| DriverError::new(ErrorName::InvalidArgs, e.to_string()))?;
        let helper = if self.settings.servicehelper.is_some() {
            " (using servicehelper)"
        } else {
            ""
        };
        info!(target: JOURNAL, "Activating service name='{name}' requested by {requester}{helper}");
        let child = self.activation.new_child(name);
        let env: Vec<(String, String)> = self
            .activation_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.effects.push(Effect::Spawn {
            child,
            service: name.to_string(),
            argv,
            env,
        });
        Ok(())
    }

    /// systemd activation: ask systemd to start the unit with a directed ActivationRequest
    /// signal, starting (waiting for) systemd itself first when it is not on the bus.
    fn request_from_systemd(
        &mut self,
        name: &str,
        entry: &ServiceEntry,
        requester: &str,
    ) -> Result<(), Failure> {
        let unit = entry.systemd_service.as_deref().unwrap_or_default();
        let request = DriverMessage::signal_on(
            DBUS_PATH,
            "org.freedesktop.systemd1.Activator",
            "ActivationRequest",
            compose::body_s(unit),
            "s",
        );
        let systemd = self.owner_of(SYSTEMD_NAME);
        let Some((msg, out)) = self.compose_from_driver_to(systemd, Some(SYSTEMD_NAME), request)
        else {
            return Ok(());
        };
        // (The unit is the service file's text, which may hold any character.)
        let shown = crate::logging::escape_for_log(unit);
        let unit = shown.as_str();
        match systemd {
            Some(s) => {
                info!(target: JOURNAL, "Activating via systemd: service name='{name}' unit='{unit}' requested by {requester}");
                self.deliver_from_bus(s, &msg, out);
                Ok(())
            }
            None => {
                info!(target: JOURNAL, "Activating systemd to hand-off: service name='{name}' unit='{unit}' requested by {requester}");
                self.activate(None, Request::Auto { msg, out }, SYSTEMD_NAME)
                    .inspect_err(|_| {
                        info!(target: JOURNAL, "Failed to activate via systemd: service name='{name}' unit='{unit}'")
                    })
            }
        }
    }

    /// A message from the bus to `to`, past the security check, plus its eavesdroppers.
    fn deliver_from_bus(&mut self, to: PeerId, msg: &Message, out: Outgoing) {
        let requested = msg.reply_serial().is_some();
        if let Err(denied) = self.check_security(msg, None, Some(to), Some(to), requested) {
            self.capture_error_reply(Some(to), msg, &denied);
            return;
        }
        self.send(to, out.clone());
        self.dispatch_matches(msg, None, Some(to), &out);
    }

    /// `name` got its first owner: StartServiceByName callers hear SUCCESS (dbus-daemon
    /// answers them as the name is created).
    pub(super) fn activation_name_created(&mut self, name: &str) {
        let Some(answers) = self.activation.start_callers(name) else {
            return;
        };
        info!(target: JOURNAL, "Successfully activated service '{name}'");
        for (peer, serial) in answers {
            if self.peers.contains_key(&peer) {
                self.send_from_driver(
                    Some(peer),
                    DriverMessage::reply(serial, compose::body_u(START_REPLY_SUCCESS), "u"),
                );
            }
        }
    }

    /// `name` was acquired by `owner`: the auto-started messages waiting for it go on, in
    /// order, as if they had just arrived; the start is over.
    pub(super) fn activation_name_acquired(&mut self, name: &str, owner: PeerId) {
        let Some(waiters) = self.activation.finish(name) else {
            return;
        };
        for w in waiters {
            let Request::Auto { msg, out } = w.request else {
                continue;
            };
            match w.peer {
                Some(from) if self.peers.contains_key(&from) => {
                    self.deliver(from, owner, &msg, out)
                }
                Some(_) => {}
                None => self.deliver_from_bus(owner, &msg, out),
            }
        }
    }

    /// A started process ended. Exiting with status 0 is not a failure (it may have forked
    /// into the background); anything else fails the start, and every start of the same
    /// command line, as in dbus-daemon.
    pub fn child_exited(&mut self, child: u64, how: ChildExit) {
        let Some((name, exec)) = self.activation.started_by(child) else {
            return;
        };
        let failure = match how {
            ChildExit::Exited(0) => return,
            ChildExit::Exited(code) if self.settings.servicehelper.is_some() => {
                helper_exit_error(code)
            }
            ChildExit::Exited(code) => DriverError::new(
                ErrorName::SpawnChildExited,
                format!("Process {name} exited with status {code}"),
            ),
            ChildExit::Signaled(sig) => DriverError::new(
                ErrorName::SpawnChildSignaled,
                format!("Process {name} received signal {sig}"),
            ),
        };
        info!(target: JOURNAL, "Activated service '{name}' failed: {}", failure.text);
        let same_exec = self.activation.sharing_exec(&name, exec.as_deref());
        for other in same_exec {
            self.fail_activation(&other, &failure);
        }
        self.fail_activation(&name, &failure);
    }

    /// The shell could not start the process at all.
    pub fn spawn_failed(&mut self, child: u64, reason: &str) {
        let Some((name, _)) = self.activation.started_by(child) else {
            return;
        };
        let text = format!("Failed to execute program {name}: {reason}");
        info!(target: JOURNAL, "Activated service '{name}' failed: {text}");
        self.fail_activation(&name, &DriverError::new(ErrorName::SpawnExecFailed, text));
    }

    /// systemd reports (ActivationFailure) that it could not start `unit`.
    pub(super) fn systemd_activation_failed(&mut self, unit: &str, error_name: &str, text: &str) {
        // (Whoever owns org.freedesktop.systemd1 says these; on a session bus without
        // systemd that may be any client.)
        info!(
            target: JOURNAL,
            "Activation via systemd failed for unit '{}': {}",
            crate::logging::escape_for_log(unit),
            crate::logging::escape_for_log(text)
        );
        let names = self.activation.for_unit(unit);
        // The error name comes from systemd; an invalid one would make an invalid message.
        let error_name = if busd_wire::names::is_valid_interface(error_name) {
            error_name.to_string()
        } else {
            ErrorName::Failed.as_str().to_string()
        };
        for n in names {
            self.fail_activation_owned(&n, &error_name, text);
        }
    }

    fn fail_activation(&mut self, name: &str, e: &DriverError) {
        self.fail_activation_owned(name, e.dbus_name(), &e.text);
    }

    /// Every caller waiting for `name` gets the error; the start is over.
    fn fail_activation_owned(&mut self, name: &str, error_name: &str, text: &str) {
        let Some(waiters) = self.activation.finish(name) else {
            return;
        };
        for w in waiters {
            if let Some(peer) = w.peer.filter(|p| self.peers.contains_key(p)) {
                let m = DriverMessage::error(w.serial(), error_name, text);
                self.send_from_driver(Some(peer), m);
            }
        }
    }

    /// Starts that took longer than service_start_timeout fail (their process is killed).
    pub(super) fn expire_activations(&mut self, now: Instant) {
        let late = self.activation.expired(now);
        let timeout = self.settings.limits.service_start_timeout;
        for (name, child) in late {
            if let Some(child) = child {
                self.effects.push(Effect::Kill { child });
            }
            let text = format!(
                "Failed to activate service '{name}': timed out (service_start_timeout={timeout}ms)"
            );
            warn!("{text}");
            self.fail_activation(&name, &DriverError::new(ErrorName::TimedOut, text));
        }
    }

    /// UpdateActivationEnvironment also goes to systemd when systemd starts services.
    pub(super) fn forward_environment_to_systemd(&mut self, vars: &[(String, String)]) {
        let lines: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let call = DriverMessage::call(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "SetEnvironment",
            compose::body_as(lines.iter().map(String::as_str)),
            "as",
        );
        // Sent like any message from the bus: to systemd's unique name when it is there.
        let systemd = self.owner_of(SYSTEMD_NAME);
        let composed = match systemd {
            Some(s) => self.compose_from_driver(Some(s), call),
            None => self.compose_from_driver_to(None, Some(SYSTEMD_NAME), call),
        };
        let Some((msg, out)) = composed else {
            return;
        };
        match systemd {
            Some(s) => self.deliver_from_bus(s, &msg, out),
            None => {
                if let Err(DriverError { text, .. }) =
                    self.activate(None, Request::Auto { msg, out }, SYSTEMD_NAME)
                {
                    warn!("cannot pass the activation environment to systemd: {text}");
                }
            }
        }
    }

    /// A message to the bus from systemd: `ActivationFailure(unit, error, message)`.
    /// Ignored unless it really comes from systemd on a bus that uses it.
    pub(super) fn handle_activation_failure(&mut self, from: PeerId, msg: &Message) {
        if self.owner_of(SYSTEMD_NAME) != Some(from) {
            warn!(
                "Ignoring forged ActivationFailure message from connection {}",
                self.describe_peer(from)
            );
            return;
        }
        if !self.settings.systemd_activation {
            warn!(
                "Ignoring unexpected ActivationFailure message while not using systemd activation"
            );
            return;
        }
        let mut r = msg.body_reader();
        let (Ok(unit), Ok(code), Ok(text)) = (r.string(), r.string(), r.string()) else {
            return;
        };
        let (unit, code, text) = (unit.to_string(), code.to_string(), text.to_string());
        self.systemd_activation_failed(&unit, &code, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, exec: &str, unit: Option<&str>) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            exec: exec.into(),
            user: None,
            systemd_service: unit.map(Into::into),
            assumed_apparmor_label: None,
        }
    }

    fn start(peer: PeerId, serial: u32) -> Waiter {
        Waiter {
            peer: Some(peer),
            request: Request::Start { serial },
        }
    }

    #[test]
    fn a_start_collects_its_waiters_and_hands_them_over_once() {
        let mut a = Activation::default();
        a.set_entries(vec![
            entry("org.b", "/bin/b", None),
            entry("org.a", "/bin/a", None),
        ]);
        assert_eq!(a.names(), ["org.a", "org.b"]);
        let t = Instant::now();
        // No start under way: the waiter comes back.
        let w = a.wait_for("org.a", start(1, 7)).expect("nothing under way");
        a.begin("org.a", w, t, a.entries.get("org.a").cloned().as_ref());
        assert!(a.wait_for("org.a", start(2, 9)).is_none());
        assert_eq!(a.waiting(), 2);
        assert_eq!(a.start_callers("org.a"), Some(vec![(1, 7), (2, 9)]));
        let child = a.new_child("org.a");
        assert_eq!(
            a.started_by(child),
            Some(("org.a".into(), Some("/bin/a".into())))
        );
        assert_eq!(a.finish("org.a").map(|w| w.len()), Some(2));
        assert_eq!((a.waiting(), a.finish("org.a").is_none()), (0, true));
        assert_eq!(a.started_by(child), None);
    }

    #[test]
    fn starts_are_found_by_command_line_unit_and_deadline_in_name_order() {
        let mut a = Activation::default();
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let same = entry("org.x", "/bin/shared", Some("x.service"));
        for (name, deadline) in [("org.z", t + 2 * s), ("org.x", t), ("org.y", t + s)] {
            let e = ServiceEntry {
                name: name.into(),
                ..same.clone()
            };
            a.begin(name, start(1, 1), deadline, Some(&e));
        }
        assert_eq!(
            a.sharing_exec("org.x", Some("/bin/shared")),
            ["org.y", "org.z"]
        );
        assert!(a.sharing_exec("org.x", None).is_empty());
        assert_eq!(a.for_unit("x.service"), ["org.x", "org.y", "org.z"]);
        assert_eq!(a.next_deadline(), Some(t));
        let child = a.new_child("org.y");
        assert_eq!(
            a.expired(t + s),
            [
                ("org.x".to_string(), None),
                ("org.y".to_string(), Some(child))
            ]
        );
    }
}
