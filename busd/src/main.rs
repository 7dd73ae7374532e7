//! busd's entry point: command line, configuration, listeners, then the event loop.

use std::fmt::Write as _;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use busd::bus::{Bus, BusSettings};
use busd::cli::{self, Options, Syslog};
use busd::server::identity::NssAccounts;
use busd::server::{self, Server, ServerConfig};
use busd_policy::{CompiledPolicy, Config};
use busd_wire::address::ListenAddress;
use busd_wire::sasl::Mechanism;
use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    ensure_standard_fds();
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{}", cli::USAGE);
            return ExitCode::from(1);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("busd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Makes sure fds 0-2 are open, so sockets never land on them (the caller may have closed
/// them, as dbus-daemon's fork test does).
fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a plain open of a constant, nul-terminated path; the lowest free fd is
            // the one being filled.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

fn init_logging(options: &Options) {
    // Like dbus-daemon: stderr is quiet unless something is wrong, the system log (when
    // asked for) also gets lifecycle and activation messages; RUST_LOG=busd=debug for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env();
    busd::logging::set_verbose(filter.is_ok());
    let filter = filter.unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if options.syslog == Syslog::Only {
        busd::logging::set_sink(busd::logging::Sink::Syslog);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(busd::logging::Writer)
        .with_target(false)
        .with_ansi(false)
        .init();
}

/// `<syslog/>` and the command line decide where the log goes (bus.c): the system log
/// in addition to stderr, or instead of it with --syslog-only.
fn choose_log_sink(options: &Options, config: &Config) {
    use busd::logging::{set_sink, Sink};
    set_sink(match options.syslog {
        Syslog::Only => Sink::Syslog,
        Syslog::On => Sink::Both,
        Syslog::Off => Sink::Stderr,
        Syslog::Default if config.syslog => Sink::Both,
        Syslog::Default => Sink::Stderr,
    });
}

/// Loads and compiles a configuration; nothing is applied until all of it is valid.
fn load(path: &Path) -> Result<(Config, ServerConfig)> {
    let config = Config::load(path)?;
    if config.apparmor_mode.as_deref() == Some("required") {
        bail!(
            "{}: <apparmor mode=\"required\"> asks for AppArmor mediation, which busd does not implement",
            path.display()
        );
    }
    let policy = CompiledPolicy::compile(&config, &NssAccounts)?;
    let mut warnings = Vec::new();
    let service_dirs = busd::activation::directories(&config, &mut warnings);
    let services = busd::activation::scan(&service_dirs, &mut warnings);
    for w in config
        .warnings
        .iter()
        .chain(&policy.warnings)
        .chain(&warnings)
    {
        tracing::warn!("{w}");
    }
    let watched_dirs = config
        .include_dirs
        .iter()
        .cloned()
        .chain(service_dirs.iter().map(|d| d.path.clone()))
        .collect();
    let server = ServerConfig {
        mechanisms: mechanisms(&config)?,
        limits: config.limits.clone(),
        policy: Rc::new(policy),
        servicehelper: config
            .servicehelper
            .as_ref()
            .map(|p| p.display().to_string()),
        services,
        watched_dirs,
        service_dirs,
    };
    Ok((config, server))
}

/// `--check-config`: what the configuration means, for administrators.
fn describe(config: &Config, server: &ServerConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "configuration files:");
    for f in &config.files {
        let _ = writeln!(out, "  {}", f.display());
    }
    let _ = writeln!(
        out,
        "bus type: {}",
        config.bus_type.as_deref().unwrap_or("(unset)")
    );
    if let Some(u) = &config.user {
        let uid = nix::unistd::User::from_name(u).ok().flatten();
        let uid = uid.map_or(" (no such user)".to_string(), |user| {
            format!(" (uid {})", user.uid)
        });
        let _ = writeln!(out, "runs as user: {u}{uid}");
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let or_none = |p: Option<String>| p.unwrap_or_else(|| "(none)".into());
    let _ = writeln!(out, "fork: {}", yes_no(config.fork));
    let _ = writeln!(out, "syslog: {}", yes_no(config.syslog));
    let pidfile = config.pidfile.as_ref().map(|p| p.display().to_string());
    let _ = writeln!(out, "pidfile: {}", or_none(pidfile));
    let _ = writeln!(
        out,
        "servicehelper: {}",
        or_none(server.servicehelper.clone())
    );
    let _ = writeln!(out, "listen:");
    for l in &config.listen {
        let _ = writeln!(out, "  {l}");
    }
    let mechs: Vec<&str> = server.mechanisms.iter().map(|m| m.name()).collect();
    let _ = writeln!(out, "auth mechanisms: {}", mechs.join(" "));
    let _ = writeln!(out, "limits:");
    for (name, value) in server.limits.entries() {
        let unit = if name.ends_with("_timeout") && value.parse::<u64>().is_ok() {
            " ms"
        } else {
            ""
        };
        let _ = writeln!(out, "  {name} = {value}{unit}");
    }
    let _ = writeln!(out, "service directories searched:");
    for d in &server.service_dirs {
        let missing = if d.path.is_dir() { "" } else { " (missing)" };
        let _ = writeln!(out, "  {}{missing}", d.path.display());
    }
    let _ = writeln!(out, "activatable services: {}", server.services.len());
    for e in &server.services {
        let _ = writeln!(out, "  {} -> {}", e.name, e.exec);
    }
    let _ = writeln!(out, "policy (rules per context: send/receive/own/connect):");
    for (ctx, v) in server.policy.describe() {
        let ctx = name_beside_id(&ctx);
        if v.send + v.receive + v.own + v.connect > 0 {
            let _ = writeln!(
                out,
                "  {ctx}: {}/{}/{}/{}",
                v.send, v.receive, v.own, v.connect
            );
        }
    }
    for w in config.warnings.iter().chain(&server.policy.warnings) {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// "user 1000" -> "user 1000 (alice)", "group 27" -> "group 27 (sudo)", when known.
fn name_beside_id(ctx: &str) -> String {
    use nix::unistd::{Gid, Group, Uid, User};
    let name = match ctx.split_once(' ') {
        Some(("user", id)) => id
            .parse()
            .ok()
            .and_then(|id| User::from_uid(Uid::from_raw(id)).ok().flatten())
            .map(|u| u.name),
        Some(("group", id)) => id
            .parse()
            .ok()
            .and_then(|id| Group::from_gid(Gid::from_raw(id)).ok().flatten())
            .map(|g| g.name),
        _ => None,
    };
    match name {
        Some(n) => format!("{ctx} ({n})"),
        None => ctx.to_string(),
    }
}

fn mechanisms(config: &Config) -> Result<Vec<Mechanism>> {
    let mut out = Vec::new();
    if config.auth.is_empty() {
        // dbus-daemon's own list, in its order.
        out.push(Mechanism::External);
        out.push(Mechanism::CookieSha1);
        if config.allow_anonymous {
            out.push(Mechanism::Anonymous);
        }
    }
    for name in &config.auth {
        match Mechanism::from_name(name) {
            Some(Mechanism::Anonymous) if !config.allow_anonymous => {}
            Some(m) if !out.contains(&m) => out.push(m),
            Some(_) => {}
            None => tracing::warn!(
                "authentication mechanism {name} is not supported by busd; not offered"
            ),
        }
    }
    if out.is_empty() {
        bail!(
            "none of the configured authentication mechanisms ({}) is supported",
            config.auth.join(", ")
        );
    }
    Ok(out)
}

fn machine_id() -> String {
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
                return s.to_string();
            }
        }
    }
    cli::new_guid()
}

fn write_fd(fd: RawFd, text: &str) -> Result<()> {
    // SAFETY: the caller named this descriptor on the command line for us to write to; it is
    // only borrowed for the write.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut data = text.as_bytes();
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot print to the given file descriptor"),
        }
    }
    Ok(())
}

fn run(options: Options) -> Result<()> {
    if options.version {
        println!(
            "busd {} (a D-Bus message bus daemon, compatible with dbus-daemon 1.14)",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(());
    }
    if options.introspect {
        println!("{}", busd::bus::introspection_xml("/org/freedesktop/DBus"));
        return Ok(());
    }
    init_logging(&options);
    let path = options
        .config_path()
        .context("No configuration file specified.")?;
    let (config, server_config) = load(&path)?;
    choose_log_sink(&options, &config);
    // Each address with the text it was written as, for error messages.
    let written: Vec<&String> = match &options.address {
        Some(a) => vec![a],
        None => config.listen.iter().collect(),
    };
    let mut addresses = Vec::new();
    for text in written {
        for a in ListenAddress::parse_list(text)? {
            addresses.push((text.as_str(), a));
        }
    }
    if addresses.is_empty() {
        bail!(
            "{}: no <listen> address and no --address given",
            path.display()
        );
    }
    // Checked only now: a configuration the daemon would refuse (above) fails the check too.
    if options.check_config {
        print!("{}", describe(&config, &server_config));
        return Ok(());
    }
    match server::raise_descriptor_limit() {
        Ok((soft, _)) => tracing::debug!(soft, "descriptor limit"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    let mut listeners = Vec::new();
    for (text, a) in &addresses {
        let bound = server::bind(a).with_context(|| format!("Failed to listen on \"{text}\""))?;
        listeners.extend(bound);
    }
    let guid = cli::new_guid();
    let printed: Vec<String> = listeners
        .iter()
        .map(|l| format!("{},guid={guid}", l.address))
        .collect();
    let address_line = format!("{}\n", printed.join(";"));

    let fork = options.fork.unwrap_or(config.fork);
    let ready_pipe = if fork { Some(daemonize()?) } else { None };
    let pid = std::process::id();
    if let Some(to) = options.print_address {
        write_fd(to.0, &address_line)?;
    }
    if let Some(to) = options.print_pid {
        write_fd(to.0, &format!("{pid}\n"))?;
    }
    for fd in [options.print_address, options.print_pid]
        .into_iter()
        .flatten()
        .map(|p| p.0)
    {
        if fd > 2 {
            // SAFETY: closing a descriptor the caller handed us only for printing.
            unsafe { libc::close(fd) };
        }
    }
    if !options.nopidfile {
        if let Some(p) = &config.pidfile {
            std::fs::write(p, format!("{pid}\n"))
                .with_context(|| format!("cannot write pid file {}", p.display()))?;
        }
    }
    if let Some(fd) = ready_pipe {
        detach_stdio();
        let _ = write_fd(fd, "1");
        // SAFETY: our end of the readiness pipe, not used again.
        unsafe { libc::close(fd) };
    }

    if let Some(user) = &config.user {
        change_user(user)?;
    }
    let settings = BusSettings {
        guid,
        machine_id: machine_id(),
        uid: nix::unistd::geteuid().as_raw(),
        pid,
        limits: config.limits.clone(),
        policy: Rc::clone(&server_config.policy),
        servicehelper: server_config.servicehelper.clone(),
        systemd_activation: options.systemd_activation,
    };
    tracing::info!("busd ready on {}", printed.join(";"));
    let reload_path = path.clone();
    let reloader = Box::new(move || {
        load(&reload_path)
            .map(|(_, s)| s)
            .map_err(|e| format!("{e:#}"))
    });
    // What started services find in their environment (bus.c, add_bus_environment).
    let starter_address = printed.first().cloned().unwrap_or_default();
    let mut starter_env = vec![("DBUS_STARTER_ADDRESS".to_string(), starter_address.clone())];
    if let Some(t) = &config.bus_type {
        starter_env.push(("DBUS_STARTER_BUS_TYPE".into(), t.clone()));
        match t.as_str() {
            "session" => starter_env.push(("DBUS_SESSION_BUS_ADDRESS".into(), starter_address)),
            "system" => starter_env.push(("DBUS_SYSTEM_BUS_ADDRESS".into(), starter_address)),
            _ => {}
        }
    }
    let notifier = server::notify::Notifier::from_env();
    let mut bus = Bus::new(settings);
    bus.set_activatable(server_config.services.clone(), false);
    let fast = if options.fastpath {
        match server::fastpath::FastPath::new() {
            Ok(f) => {
                bus.set_fastpath(true);
                bus.set_fast_figures(f.figures());
                bus.set_fast_pid_namespace(server::fastpath::pid_namespace());
                Some(f)
            }
            Err(e) => {
                // The standard path works without it; clients asking to join are told so.
                tracing::warn!("the fast path is unavailable: {e}");
                None
            }
        }
    } else {
        None
    };
    // SIGHUP, SIGTERM and SIGINT are taken by a thread of their own (blocked everywhere
    // else, so none interrupts the event loop) and handed to the server as requests.
    let mut signals = SigSet::empty();
    for sig in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(sig);
    }
    signals.thread_block()?;
    // Started services are reaped by the server; a SIGCHLD ignored by whoever started busd
    // would make the kernel reap them first and lose their exit status.
    // SAFETY: setting the default disposition installs no handler.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl) }?;
    let server = Server::new(
        listeners,
        bus,
        server_config,
        reloader,
        starter_env,
        notifier,
        fast,
    )?;
    let control = server.control();
    std::thread::Builder::new()
        .name("busd-signals".into())
        .spawn(move || loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => control.reload(),
                Ok(_) => {
                    control.shutdown();
                    return;
                }
                Err(e) => {
                    tracing::error!("waiting for signals failed: {e}");
                    return;
                }
            }
        })?;
    server.run()?;
    Ok(())
}

/// `<user>`: after binding, run as that user (as dbus-daemon does for the system bus).
fn change_user(name: &str) -> Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, User};
    let user = User::from_name(name)
        .ok()
        .flatten()
        .with_context(|| format!("Could not get UID and GID for username \"{name}\""))?;
    if nix::unistd::geteuid() == user.uid {
        return Ok(());
    }
    let groups: Vec<Gid> = std::ffi::CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    setgroups(&groups).with_context(|| format!("Failed to set groups for user \"{name}\""))?;
    setgid(user.gid).with_context(|| format!("Failed to set GID to {}", user.gid))?;
    setuid(user.uid).with_context(|| format!("Failed to set UID to {}", user.uid))?;
    Ok(())
}

/// Forks: the parent waits until the child says it is ready, then exits. Returns, in the
/// child, the write end of the readiness pipe.
fn daemonize() -> Result<RawFd> {
    let (r, w) = nix::unistd::pipe()?;
    // SAFETY: busd is single-threaded at this point (no runtime, no logging threads), so the
    // child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut b = [0u8; 1];
            let ok = matches!(
                nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&r), &mut b),
                Ok(1)
            );
            std::process::exit(if ok { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::unistd::setsid()?;
            Ok(std::os::fd::IntoRawFd::into_raw_fd(w))
        }
    }
}

/// The forked daemon must not keep the caller's terminal or pipes open.
fn detach_stdio() {
    // SAFETY: plain descriptor-table operations on fds 0-2, which ensure_standard_fds opened.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}
