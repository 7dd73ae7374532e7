//! The processes the shell starts for activation: started as dbus-daemon starts them, and
//! watched with a pidfd each (polled where the kernel or a seccomp profile refuses
//! `pidfd_open`), so nothing depends on SIGCHLD or on the process's signal mask.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use tracing::{debug, warn};

use crate::bus::activation::ChildExit;

/// How often started processes without a pidfd are checked for their end.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The descriptor limit busd was started with, given back to the services it starts.
static STARTED_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raises the soft descriptor limit to the hard one: busd waits with epoll (no select()
/// ceiling), every connection costs a descriptor and a fast-path member three, and a
/// session's default soft limit (1024) would otherwise cap the bus. Services get the
/// original limit back (see [`Children::spawn`]). Returns the limits now in force.
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = STARTED_NOFILE.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((hard, hard))
}

/// The signals busd's main thread hands to a `Control` (see main.rs), plus SIGCHLD:
/// whatever of them is blocked is unblocked in started services.
pub fn handled_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask
}

/// The started processes, by the bus's child id.
pub(super) struct Children {
    running: HashMap<u64, (std::process::Child, Option<OwnedFd>)>,
    /// DBUS_STARTER_ADDRESS and friends, given to every started service.
    starter_env: Vec<(String, String)>,
    /// Set in the token of a pidfd (the rest is the child id).
    token_bit: usize,
}

impl Children {
    pub fn new(starter_env: Vec<(String, String)>, token_bit: usize) -> Self {
        Children {
            running: HashMap::new(),
            starter_env,
            token_bit,
        }
    }

    /// Starts a service's process as dbus-daemon does: the daemon's environment with the
    /// activation environment over it, the daemon's stdio, no PATH search; its pidfd is
    /// registered with `registry`. Returns why it could not be started.
    pub fn spawn(
        &mut self,
        registry: &Registry,
        child: u64,
        service: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let Some((program, args)) = argv.split_first() else {
            return Ok(());
        };
        // execve() without a search path, like dbus-daemon: a bare name is relative.
        let program = if program.contains('/') {
            program.clone()
        } else {
            format!("./{program}")
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .envs(env.iter().cloned())
            .envs(self.starter_env.iter().cloned());
        let nofile = STARTED_NOFILE.get().copied();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (close_range, sigprocmask, signal, setrlimit).
        unsafe {
            cmd.pre_exec(move || {
                // Every descriptor busd makes is close-on-exec; one it inherited from whoever
                // started it may not be. A service gets only 0-2, as from dbus-daemon.
                // (Errors are ignored: a kernel before 5.11 lacks the flag.)
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                let mask = handled_signals();
                nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None)?;
                // dbus-daemon's services start with SIGPIPE ignored.
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                if let Some((soft, hard)) = nofile {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )?;
                }
                Ok(())
            });
        }
        let c = cmd.spawn().map_err(|e| {
            e.raw_os_error()
                .map(|n| nix::errno::Errno::from_raw(n).desc().to_string())
                .unwrap_or_else(|| e.to_string())
        })?;
        debug!(service, pid = c.id(), "started");
        let watched = pidfd_open(c.id()).and_then(|fd| {
            registry.register(
                &mut SourceFd(&fd.as_raw_fd()),
                Token(self.token_bit | child as usize),
                Interest::READABLE,
            )?;
            Ok(fd)
        });
        let pidfd = match watched {
            Ok(fd) => Some(fd),
            Err(e) => {
                // Older kernels (before 5.3) and some seccomp profiles: poll it.
                debug!("no pidfd for a started process ({e}); polling it");
                None
            }
        };
        self.running.insert(child, (c, pidfd));
        Ok(())
    }

    /// Sends SIGKILL to a started process (it did not take its name in time).
    pub fn kill(&mut self, child: u64) {
        if let Some((c, _)) = self.running.get_mut(&child) {
            let _ = c.kill();
        }
    }

    /// Whether `child` ended, and how; an ended process is forgotten. None while it runs,
    /// or when its status is lost (someone else reaped it: an embedder's `waitpid(-1)`, an
    /// ignored SIGCHLD), in which case the start ends at service_start_timeout.
    pub fn reap(&mut self, registry: &Registry, child: u64) -> Option<ChildExit> {
        use std::os::unix::process::ExitStatusExt;
        let (c, _) = self.running.get_mut(&child)?;
        let status = match c.try_wait() {
            Ok(Some(status)) => Some(status),
            Ok(None) => return None,
            Err(e) => {
                warn!("cannot collect a started process: {e}");
                None
            }
        };
        if let Some((_, Some(fd))) = self.running.remove(&child) {
            let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        match status.map(|s| (s.code(), s.signal())) {
            Some((Some(code), _)) => Some(ChildExit::Exited(code)),
            Some((None, Some(sig))) => Some(ChildExit::Signaled(sig)),
            _ => None,
        }
    }

    /// The processes without a pidfd, to poll.
    pub fn polled(&self) -> Vec<u64> {
        self.running
            .iter()
            .filter(|(_, (_, fd))| fd.is_none())
            .map(|(&id, _)| id)
            .collect()
    }

    /// When the polled processes are next checked, if there are any.
    pub fn next_poll(&self) -> Option<Instant> {
        self.running
            .values()
            .any(|(_, fd)| fd.is_none())
            .then(|| Instant::now() + POLL_EVERY)
    }
}

/// A descriptor that becomes readable when process `pid` (our child, not yet reaped) ends.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_process_is_seen_to_end_with_its_status() {
        let mut poll = mio::Poll::new().unwrap();
        let mut children = Children::new(Vec::new(), 1 << 47);
        let argv = ["/bin/sh", "-c", "exit 3"].map(String::from);
        children
            .spawn(poll.registry(), 7, "org.example.T", &argv, &[])
            .unwrap();
        // Its pidfd becomes readable when it ends.
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = false;
        while !seen && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            seen = events.iter().any(|e| e.token() == Token((1 << 47) | 7));
        }
        assert!(seen, "no readiness on the pidfd");
        assert_eq!(
            children.reap(poll.registry(), 7),
            Some(ChildExit::Exited(3))
        );
        assert_eq!(children.reap(poll.registry(), 7), None, "forgotten");
        assert!(children.polled().is_empty() && children.next_poll().is_none());
    }

    #[test]
    fn a_program_that_does_not_exist_is_reported() {
        let poll = mio::Poll::new().unwrap();
        let mut children = Children::new(Vec::new(), 1 << 47);
        let argv = ["/nonexistent/busd-test-service".to_string()];
        let err = children
            .spawn(poll.registry(), 1, "org.example.T", &argv, &[])
            .unwrap_err();
        assert!(err.contains("No such file"), "{err}");
    }
}
