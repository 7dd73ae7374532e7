//! busd-top: what is on a bus, refreshed like top. Connections with their process, names,
//! match rules and traffic (totals and rates), monitors, and each fast-path member's own
//! figures, from the bus's driver. Works with any bus that has
//! `org.freedesktop.DBus.Debug.Stats` (busd, and dbus-daemon built with --enable-stats, as
//! Debian's is); traffic and monitors need busd's own `busd.` keys.
//!
//! Layout:
//! - [`client`]: a blocking driver client (unix `path=` and `abstract=` addresses).
//! - [`snapshot`]: one look at the bus.
//! - [`view`]: rows, rates, order, filter and columns; the plain table of `--once`.
//! - [`ui`]: the interactive screen (ratatui and crossterm).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

mod client;
mod snapshot;
mod ui;
mod view;

const USAGE: &str =
    "usage: busd-top [--session | --system | --address=ADDRESS] [--once] [--interval=SECONDS]

Shows the connections of a bus: process, well-known names, match rules and traffic,
refreshed every interval (2 s). Keys: m b r n u p sort, / filter, h help, q quit.
--once prints one table and exits (rates need two looks, so they show -).";

/// Why busd-top stops before its time, in one line.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0} (busd-top --help shows the usage)")]
    Usage(String),
    #[error("{0}")]
    Bus(#[from] client::Error),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

struct Options {
    address: Option<String>,
    once: bool,
    interval: Duration,
}

/// None: `--help` was asked for.
fn options(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, Failure> {
    let session = || std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
    let mut o = Options {
        address: session(),
        once: false,
        interval: Duration::from_secs(2),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--key=value` or `--key value`.
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| Failure::Usage(format!("{key} needs a value")))
        };
        match key.as_str() {
            "--session" => o.address = session(),
            "--system" => {
                o.address = Some(
                    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                        .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into()),
                )
            }
            "--address" => o.address = Some(value()?),
            "--once" => o.once = true,
            "--interval" => {
                let v = value()?;
                o.interval = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.1..=3600.0).contains(s))
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        Failure::Usage(format!(
                            "--interval takes seconds from 0.1 to 3600, not \"{v}\""
                        ))
                    })?;
            }
            "--help" | "-h" => return Ok(None),
            _ => return Err(Failure::Usage(format!("unknown argument \"{arg}\""))),
        }
    }
    Ok(Some(o))
}

fn run() -> Result<(), Failure> {
    let Some(o) = options(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let Some(address) = o.address else {
        return Err(Failure::Usage(
            "no bus address: give --address=ADDRESS, or set DBUS_SESSION_BUS_ADDRESS".into(),
        ));
    };
    if !o.once && !std::io::stdout().is_terminal() {
        return Err(Failure::Usage(
            "standard output is not a terminal: --once prints one table".into(),
        ));
    }
    // Keys come from there; at the end of a file crossterm would read on and on.
    if !o.once && !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(
            "standard input is not a terminal (keys are read there): --once prints one table"
                .into(),
        ));
    }
    let mut client = client::Client::connect(&address)?;
    if o.once {
        let snapshot = snapshot::Snapshot::take(&mut client)?;
        let order = view::Order {
            key: view::SortKey::Unique,
            reversed: false,
        };
        print!(
            "{}",
            view::text(&view::View::new(&snapshot, None), order, "")
        );
        return Ok(());
    }
    // Before the terminal is changed: a signal from then on ends busd-top as q does.
    ui::ending_signals();
    ui::end_on_hangup();
    let mut terminal = ratatui::try_init()?;
    let result = ui::run(&mut terminal, &mut client, &address, o.interval);
    drop(terminal);
    ratatui::try_restore()?;
    ui::end_as_signalled();
    result
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("busd-top: {e}");
            ExitCode::FAILURE
        }
    }
}
