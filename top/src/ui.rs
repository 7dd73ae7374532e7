//! The interactive screen: keys (sorting, a filter, help, quitting) and drawing with
//! ratatui, refreshed every interval. Every line is cut at the terminal's width and rows
//! that do not fit its height are left out; nothing wraps.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table};
use ratatui::{DefaultTerminal, Frame};

use crate::client::Client;
use crate::snapshot::Snapshot;
use crate::view::{
    self, Column, Order, Row, SortKey, View, CONNECTION_COLUMNS, FAST_COLUMNS, FAST_TITLE,
    NAMES_MIN, NAMES_TITLE,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Typing the filter.
    Filter,
    Help,
}

/// What the person chose: order, filter, mode.
#[derive(Debug)]
pub struct App {
    order: Order,
    filter: String,
    mode: Mode,
    quit: bool,
}

const HELP: &[&str] = &[
    "busd-top: what is on the bus, refreshed every interval",
    "",
    "  m  sort by messages (per second sent and received, then totals)",
    "  b  sort by bytes (the same)",
    "  r  sort by match rules",
    "  n  sort by well-known names",
    "  u  sort by unique name (the order connections came in)",
    "  p  sort by process",
    "     the same key again, or R, reverses the order",
    "  /  filter: part of a name or process (Enter keeps it, Esc clears it)",
    "  Esc  clear the filter",
    "  h ?  this help (any key closes it)",
    "  q  quit (Ctrl-C too)",
    "",
    "TX: messages the connection sent; RX: messages the bus delivered to it",
    "(/s: per second; B/s: bytes per second; -: the bus does not count them)",
    "Columns that do not fit are left out: a wider terminal shows",
    "PID, RULES, PATH (std or fast) and UID.",
];

impl App {
    pub fn new() -> App {
        App {
            order: Order {
                key: SortKey::Unique,
                reversed: false,
            },
            filter: String::new(),
            mode: Mode::Normal,
            quit: false,
        }
    }

    fn sort(&mut self, key: SortKey) {
        if self.order.key == key {
            self.order.reversed = !self.order.reversed;
        } else {
            self.order = Order {
                key,
                reversed: false,
            };
        }
    }

    pub fn key(&mut self, k: KeyEvent) {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if k.modifiers.contains(KeyModifiers::ALT) {
            // A terminal sends Esc and a key typed right after it as one Alt+key.
            self.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
            self.key(KeyEvent::new(k.code, k.modifiers - KeyModifiers::ALT));
            return;
        }
        match self.mode {
            Mode::Help => self.mode = Mode::Normal,
            Mode::Filter => match k.code {
                KeyCode::Enter => self.mode = Mode::Normal,
                KeyCode::Esc => {
                    self.filter.clear();
                    self.mode = Mode::Normal;
                }
                KeyCode::Backspace => drop(self.filter.pop()),
                KeyCode::Char('u') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.filter.clear()
                }
                KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.filter.push(c)
                }
                _ => {}
            },
            Mode::Normal => match k.code {
                KeyCode::Char('q') => self.quit = true,
                KeyCode::Esc => self.filter.clear(),
                KeyCode::Char('h' | '?') => self.mode = Mode::Help,
                KeyCode::Char('/') => self.mode = Mode::Filter,
                KeyCode::Char('m') => self.sort(SortKey::Messages),
                KeyCode::Char('b') => self.sort(SortKey::Bytes),
                KeyCode::Char('r') => self.sort(SortKey::Rules),
                KeyCode::Char('n') => self.sort(SortKey::Names),
                KeyCode::Char('u') => self.sort(SortKey::Unique),
                KeyCode::Char('p') => self.sort(SortKey::Process),
                KeyCode::Char('R') => self.order.reversed = !self.order.reversed,
                _ => {}
            },
        }
    }
}

/// Runs until the person quits; looks at the bus every `interval`.
pub fn run(
    terminal: &mut DefaultTerminal,
    client: &mut Client,
    address: &str,
    interval: Duration,
) -> Result<(), crate::Failure> {
    let mut app = App::new();
    let mut now = Snapshot::take(client)?;
    let mut view = View::new(&now, None);
    let mut next = Instant::now() + interval;
    // (Installed by main before the terminal changed.)
    let ended = &ENDED;
    let mut stale = true;
    loop {
        if ended.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            // (The caller restores the terminal, as after q.)
            return Ok(());
        }
        if std::mem::take(&mut stale) {
            terminal.draw(|f| draw(f, &app, &view, address, interval))?;
        }
        // (In slices: a signal that ends busd-top is seen within one.)
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(SIGNAL_CHECK);
        if event::poll(wait)? {
            // (Any event, a resize among them, redraws.)
            stale = true;
            if let Event::Key(k) = event::read()? {
                if k.kind == KeyEventKind::Press {
                    app.key(k);
                }
            }
            if app.quit {
                return Ok(());
            }
        }
        // (Checked after events too: a steady stream of them must not stop the looks.)
        if Instant::now() < next {
            continue;
        }
        let before = std::mem::replace(&mut now, Snapshot::take(client)?);
        view = View::new(&now, Some(&before));
        next = Instant::now() + interval;
        stale = true;
    }
}

/// How often the screen loop looks for a signal that ends busd-top.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The signal that ended busd-top (0: none yet).
static ENDED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Makes SIGTERM, SIGHUP and SIGINT set [`ENDED`]: they end busd-top as q does, so that
/// the terminal is restored (the raw mode and the alternate screen would otherwise stay).
pub fn ending_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::sync::atomic::Ordering;
    extern "C" fn ended(signal: std::os::raw::c_int) {
        ENDED.store(signal, Ordering::Relaxed);
    }
    let action = SigAction::new(
        SigHandler::Handler(ended),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &action) };
    }
}

/// Ends busd-top when its terminal goes away (a closed terminal window, a killed tmux),
/// from a thread of its own that waits for the hangup. The event loop cannot: crossterm
/// 0.28 reads a hung-up terminal again and again without returning (crossterm issue
/// 793), so neither the loop nor SIGHUP's flag would ever be looked at, and busd-top
/// would spin on a core until killed. There is no terminal left to restore: the process
/// ends by SIGHUP, as a program without a handler does.
pub fn end_on_hangup() {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::Signal;
    use std::os::fd::AsFd;
    std::thread::spawn(|| {
        let stdin = std::io::stdin();
        loop {
            // (No events asked: poll reports a hangup or an error whatever was asked.)
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::empty())];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {
                    let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
                    if fds[0].revents().is_some_and(|r| r.intersects(gone)) {
                        break;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
        end_by(Signal::SIGHUP);
    });
}

/// Ends the process by `signal`, with its default action.
fn end_by(signal: nix::sys::signal::Signal) {
    use nix::sys::signal::{raise, sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default action involves no handler.
    let _ = unsafe { sigaction(signal, &default) };
    let _ = raise(signal);
}

/// Once the terminal is given back: if a signal ended busd-top, ends it again by that
/// signal with its default action, so that whoever waits sees how it ended (a shell's
/// `$?` is 128 plus the signal, as for any program the signal ends).
pub fn end_as_signalled() {
    let signal = ENDED.load(std::sync::atomic::Ordering::Relaxed);
    if let Ok(signal) = nix::sys::signal::Signal::try_from(signal) {
        end_by(signal);
    }
}

fn cell(c: &Column, text: String) -> Cell<'static> {
    let line = Line::from(text);
    Cell::from(if c.right { line.right_aligned() } else { line })
}

/// A last column that takes what the others leave: its title and its cell.
type LastColumn = (&'static str, fn(&Row) -> String);

/// A table of `rows` with the columns that fit `area`, and `last` taking what remains.
fn table(
    f: &mut Frame,
    area: Rect,
    columns: &'static [Column],
    rows: &[&Row],
    last: Option<LastColumn>,
) {
    let rest = if last.is_some() { NAMES_MIN } else { 0 };
    let shown = view::fitting(columns, area.width, rest);
    let mut widths: Vec<Constraint> = shown.iter().map(|c| Constraint::Length(c.width)).collect();
    let mut header: Vec<Cell> = shown.iter().map(|c| cell(c, c.title.into())).collect();
    if let Some((title, _)) = last {
        widths.push(Constraint::Fill(1));
        header.push(Cell::from(title));
    }
    let body = rows.iter().map(|r| {
        let mut cells: Vec<Cell> = shown.iter().map(|c| cell(c, (c.cell)(r))).collect();
        if let Some((_, text)) = last {
            cells.push(Cell::from(text(r)));
        }
        TableRow::new(cells)
    });
    let t = Table::new(body, widths)
        .header(TableRow::new(header).style(Style::new().add_modifier(Modifier::REVERSED)))
        .column_spacing(1);
    f.render_widget(t, area);
}

fn draw(f: &mut Frame, app: &App, view: &View, address: &str, interval: Duration) {
    let rows = view.shown(app.order, &app.filter);
    let fast: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.conn.fast_member.is_some())
        .collect();
    let area = f.area();
    // A fast-path section when there are members: its title, header and rows, within a
    // third of the screen.
    let fast_height = if fast.is_empty() {
        0
    } else {
        (fast.len() as u16 + 2).min(area.height / 3)
    };
    let [top, status, main, fast_area, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(fast_height),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(view.summary()), top);
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let shown = if app.filter.is_empty() {
        format!("{} connection{}", rows.len(), plural(rows.len()))
    } else {
        format!(
            "{} of {} connection{} match \"{}\"",
            rows.len(),
            view.rows.len(),
            plural(view.rows.len()),
            app.filter
        )
    };
    f.render_widget(
        Paragraph::new(format!(
            "{shown}, by {}   h: help  q: quit",
            app.order.describe()
        )),
        status,
    );
    table(
        f,
        main,
        &CONNECTION_COLUMNS,
        &rows,
        Some((NAMES_TITLE, view::names_cell)),
    );
    if fast_height > 0 {
        let [title, rest] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(fast_area);
        f.render_widget(Paragraph::new(FAST_TITLE), title);
        table(f, rest, &FAST_COLUMNS, &fast, None);
    }
    if app.mode == Mode::Filter {
        let prompt = format!("filter: {}", app.filter);
        let x = bottom.x + (prompt.chars().count() as u16).min(bottom.width.saturating_sub(1));
        f.render_widget(Paragraph::new(prompt), bottom);
        f.set_cursor_position((x, bottom.y));
    } else {
        f.render_widget(
            Paragraph::new(format!("{address}   every {}s", interval.as_secs_f64())),
            bottom,
        );
    }
    if app.mode == Mode::Help {
        help(f, area);
    }
}

fn help(f: &mut Frame, area: Rect) {
    let width = (HELP.iter().map(|l| l.len()).max().unwrap_or(0) as u16 + 2).min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    f.render_widget(Clear, popup);
    let text: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(
        Paragraph::new(text).block(Block::new().borders(Borders::ALL).title(" help ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(app: &mut App, code: KeyCode) {
        app.key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    #[test]
    fn keys_sort_filter_help_and_quit() {
        let mut app = App::new();
        press(&mut app, KeyCode::Char('m'));
        assert_eq!(app.order.key, SortKey::Messages);
        press(&mut app, KeyCode::Char('m'));
        assert!(app.order.reversed);
        press(&mut app, KeyCode::Char('/'));
        for c in "qh".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        assert_eq!((app.filter.as_str(), app.quit), ("qh", false));
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('?'));
        assert_eq!(app.mode, Mode::Help);
        press(&mut app, KeyCode::Char('q'));
        assert_eq!((app.mode, app.quit), (Mode::Normal, false));
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.filter, "");
        press(&mut app, KeyCode::Char('q'));
        assert!(app.quit);
        let mut app = App::new();
        press(&mut app, KeyCode::Char('/'));
        app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.quit);
        // Esc then q, typed fast: the filter closes and busd-top quits.
        let mut app = App::new();
        press(&mut app, KeyCode::Char('/'));
        press(&mut app, KeyCode::Char('x'));
        app.key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::ALT));
        assert_eq!(
            (app.filter.as_str(), app.mode, app.quit),
            ("", Mode::Normal, true)
        );
    }
}
